package gc

import (
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"codeberg.org/provenix/provenix/cache-push/store/s3"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/tests3"
)

// TestCollectUploads: on a real S3 store (versitygw), Collect deletes an
// upload interrupted longer than the grace ago after a real run, and keeps
// it in a dry run and while it is younger than the grace.
func TestCollectUploads(t *testing.T) {
	srv := tests3.Start(t)
	ctx := testctx.New(t, 30*time.Second)
	const prefix = "gc-uploads"
	st, err := s3.New(s3.Options{Endpoint: srv.Endpoint, Region: tests3.Region, Bucket: srv.Bucket, Prefix: prefix,
		AccessKey: tests3.AccessKey, SecretKey: tests3.SecretKey, InsecureHTTPUnsafe: true})
	if err != nil {
		t.Fatal(err)
	}
	// What a pusher killed between Create and Commit leaves behind.
	mc, err := minio.New(srv.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(tests3.AccessKey, tests3.SecretKey, ""), Region: tests3.Region})
	if err != nil {
		t.Fatal(err)
	}
	const left = prefix + "/.tmp/20260101T000000Z-left"
	if _, err := mc.PutObject(ctx, srv.Bucket, left, strings.NewReader("x"), 1, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	exists := func() bool {
		_, err := mc.StatObject(ctx, srv.Bucket, left, minio.StatObjectOptions{})
		return err == nil
	}
	keep := []string{storePath("nothing-here")}
	if _, err := Collect(ctx, st, Options{Keep: keep, Grace: time.Hour}); err != nil || !exists() {
		t.Fatalf("an upload younger than the grace: err %v, exists %v", err, exists())
	}
	time.Sleep(2 * time.Second)
	if _, err := Collect(ctx, st, Options{Keep: keep, Grace: time.Second, DryRun: true}); err != nil || !exists() {
		t.Fatalf("dry run: err %v, exists %v", err, exists())
	}
	if _, err := Collect(ctx, st, Options{Keep: keep, Grace: time.Second}); err != nil || exists() {
		t.Fatalf("an upload older than the grace: err %v, exists %v", err, exists())
	}
}
