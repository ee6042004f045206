package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"codeberg.org/provenix/provenix/cache-push/gc"
	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cache-push/store/s3"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testlog"
	"codeberg.org/provenix/provenix/internal/tests3"
	"codeberg.org/provenix/provenix/up"
)

func s3Options(srv *tests3.Server, prefix string) *s3.Options {
	return &s3.Options{
		Endpoint: srv.Endpoint, Region: tests3.Region, Bucket: srv.Bucket, Prefix: prefix,
		AccessKey: tests3.AccessKey, SecretKey: tests3.SecretKey, InsecureHTTPUnsafe: true,
	}
}

// TestEndToEndS3 runs the build → push → substitute → verify path with the
// cache in a real S3 server (versitygw): the pusher writes the bucket and
// the stack's cache server serves stock nix from it.
func TestEndToEndS3(t *testing.T) {
	busybox := requireNix(t)
	srv := tests3.Start(t)
	ctx := testctx.New(t, 5*time.Minute)
	dir := t.TempDir()
	stack := startStack(t, up.Config{DataDir: dir, S3: s3Options(srv, "tenants/e2e")})
	p := stack.Paths()

	pub := buildSample(t, ctx, busybox, "--data-dir", dir)
	out := pub.Outputs[0]
	ni := waitNarinfo(t, stack.CacheURL(), out.Path)
	if ni.NarSize != out.NarSize {
		t.Fatalf("narinfo NarSize %d, attested %d", ni.NarSize, out.NarSize)
	}

	// The objects are in the bucket, under the prefix, and not on disk.
	bucket, err := s3.New(*s3Options(srv, "tenants/e2e"))
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]bool{}
	if err := bucket.List(ctx, "", func(i store.Info) error { keys[i.Key] = true; return nil }); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{cachelayout.NarinfoKey(out.Path), cachelayout.ProvenanceKey(out.Path), ni.URL} {
		if !keys[k] {
			t.Errorf("no %s in the bucket; it holds %v", k, keys)
		}
	}
	if _, err := os.Stat(filepath.Join(srv.Dir, srv.Bucket, "tenants", "e2e", cachelayout.NarinfoKey(out.Path))); err != nil {
		t.Errorf("narinfo not under the prefix in the bucket: %v", err)
	}
	if _, err := os.Stat(filepath.Join(p.Cache(), cachelayout.NarinfoKey(out.Path))); err == nil {
		t.Errorf("narinfo also written to the local cache %s", p.Cache())
	}

	requireSubstitutes(t, ctx, stack.CacheURL(), p.CachePub(), out)
	stdout, stderr, code := cli(t, ctx, "verify", "--data-dir", dir, "--cache", stack.CacheURL(), "--cache-key", p.CachePub(), out.Path)
	if code != 0 || !strings.Contains(stdout, "verified") {
		t.Fatalf("verify --cache: exit %d\n%s\n%s", code, stdout, stderr)
	}

	// A separate `provenix cache serve` on the same bucket serves it too.
	serveURL := serveCache(t, ctx, append([]string{"--data-dir", t.TempDir()}, s3Args(t, srv, "tenants/e2e")...)...)
	if got := waitNarinfo(t, serveURL, out.Path); got.NarHash.String() != ni.NarHash.String() || got.URL != ni.URL {
		t.Fatalf("cache serve's narinfo %+v differs from the stack's %+v", got, ni)
	}
	requireSubstitutes(t, ctx, serveURL, p.CachePub(), out)

	// And straight from the bucket: the pusher stored a nix-cache-info, so
	// the prefix is a whole binary cache; with a public-read bucket policy
	// stock nix substitutes from the S3 server's own HTTP endpoint, no
	// Provenix in between.
	if got := string(readObject(t, ctx, srv, "tenants/e2e/nix-cache-info")); !strings.Contains(got, "StoreDir: /nix/store") {
		t.Fatalf("nix-cache-info in the bucket: %q", got)
	}
	policy := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":["*"]},` +
		`"Action":["s3:GetObject"],"Resource":["arn:aws:s3:::` + srv.Bucket + `/tenants/e2e/*"]}]}`
	if err := minioClient(t, srv).SetBucketPolicy(ctx, srv.Bucket, policy); err != nil {
		t.Fatal(err)
	}
	requireSubstitutes(t, ctx, srv.URL+"/"+srv.Bucket+"/tenants/e2e", p.CachePub(), out)
}

// minioClient is a client of srv with the test credentials.
func minioClient(t *testing.T, srv *tests3.Server) *minio.Client {
	t.Helper()
	mc, err := minio.New(srv.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(tests3.AccessKey, tests3.SecretKey, ""), Region: tests3.Region})
	if err != nil {
		t.Fatal(err)
	}
	return mc
}

// readObject reads key from srv's bucket.
func readObject(t *testing.T, ctx context.Context, srv *tests3.Server, key string) []byte {
	t.Helper()
	obj, err := minioClient(t, srv).GetObject(ctx, srv.Bucket, key, minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(obj); err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return b.Bytes()
}

// serveCache runs `provenix cache serve` in-process on a free port with
// args until the test ends, and returns its URL.
func serveCache(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	sctx, cancel := context.WithCancel(ctx)
	var out, errb testlog.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(sctx, append([]string{"cache", "serve", "--listen", "127.0.0.1:0"}, args...), strings.NewReader(""), &out, &errb)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	re := regexp.MustCompile(` at (http://127\.0\.0\.1:[0-9]+)\n`)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if m := re.FindStringSubmatch(out.String()); m != nil {
			return m[1]
		}
		select {
		case code := <-done:
			t.Fatalf("cache serve exited %d\n%s\n%s", code, out.String(), errb.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("cache serve did not start in 30s\n%s\n%s", out.String(), errb.String())
		}
	}
}

// TestUpS3Errors: S3 flags of up and cache-push are checked before anything
// starts, and a missing bucket stops `up` with a clear error.
func TestUpS3Errors(t *testing.T) {
	srv := tests3.Start(t)
	ctx := testctx.New(t, time.Minute)
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte(tests3.SecretKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(s3SecretEnv, "")
	dataDir := t.TempDir()
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--s3-bucket", "b"}, exitUsageErr, "need --s3-endpoint"},
		{[]string{"--s3-endpoint", srv.Endpoint, "--s3-access-key", tests3.AccessKey, "--s3-secret-file", secret}, exitUsageErr, "needs --s3-bucket"},
		{[]string{"--s3-endpoint", srv.Endpoint, "--s3-bucket", srv.Bucket, "--s3-access-key", tests3.AccessKey}, exitUsageErr, "no S3 secret key"},
		{[]string{"cache-push", "--s3-endpoint", srv.Endpoint, "--s3-bucket", srv.Bucket, "--s3-secret-file", secret}, exitUsageErr, "needs --s3-access-key"},
		{[]string{"cache-push", "--dir", "x", "--s3-endpoint", srv.Endpoint, "--s3-bucket", srv.Bucket, "--s3-access-key", tests3.AccessKey,
			"--s3-secret-file", secret}, exitUsageErr, "exclude each other"},
		{[]string{"--s3-endpoint", srv.Endpoint, "--s3-bucket", "no-such-bucket", "--s3-access-key", tests3.AccessKey,
			"--s3-secret-file", secret, "--s3-region", tests3.Region, "--s3-insecure-http"}, exitUsageErr, `bucket "no-such-bucket" does not exist`},
	} {
		args := append([]string{"up", "--listen", "127.0.0.1:0"}, c.args...)
		if c.args[0] == "cache-push" {
			args = c.args
		}
		stdout, stderr, code := cli(t, ctx, append(args, "--data-dir", dataDir)...)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("up %v: exit %d, want %d with %q\n%s\n%s", c.args, code, c.code, c.want, stdout, stderr)
		}
	}
}

// s3Args are the --s3-* flags reaching srv under prefix, the secret in a
// file.
func s3Args(t *testing.T, srv *tests3.Server, prefix string) []string {
	t.Helper()
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte(tests3.SecretKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return []string{"--s3-endpoint", srv.Endpoint, "--s3-bucket", srv.Bucket, "--s3-prefix", prefix, "--s3-region", tests3.Region,
		"--s3-access-key", tests3.AccessKey, "--s3-secret-file", secret, "--s3-insecure-http"}
}

// TestCacheGCS3: `provenix cache gc` on an S3 cache deletes an old path
// nothing keeps, narinfo, sidecar and NAR, keeps an old path that a kept
// one references, and removes uploads interrupted longer than --grace ago.
func TestCacheGCS3(t *testing.T) {
	srv := tests3.Start(t)
	ctx := testctx.New(t, time.Minute)
	bucket, err := s3.New(*s3Options(srv, "tenants/gc"))
	if err != nil {
		t.Fatal(err)
	}
	put := func(objs map[string][]byte) {
		for k, v := range objs {
			if err := store.Put(ctx, bucket, k, bytes.NewReader(v)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// S3 cannot backdate an object: everything is made old by waiting past
	// --max-age, and the root is kept by --keep, so a slow machine cannot
	// age it out.
	unref, _, _ := pathObjects("unreferenced")
	dep, _, depPath := pathObjects("dependency")
	root, _, rootPath := pathObjects("root", depPath)
	put(unref)
	put(dep)
	put(root)
	keep := filepath.Join(t.TempDir(), "keep")
	if err := os.WriteFile(keep, []byte(rootPath+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// What a pusher killed mid-upload leaves: a temporary object and an
	// incomplete multipart upload under the prefix's .tmp/.
	core, err := minio.NewCore(srv.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(tests3.AccessKey, tests3.SecretKey, ""), Region: tests3.Region})
	if err != nil {
		t.Fatal(err)
	}
	const tmpObj, tmpUpload = "tenants/gc/.tmp/20260101T000000Z-left", "tenants/gc/.tmp/20260101T000000Z-parts"
	if _, err := core.PutObject(ctx, srv.Bucket, tmpObj, strings.NewReader("x"), 1, "", "", minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	id, err := core.NewMultipartUpload(ctx, srv.Bucket, tmpUpload, minio.PutObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := core.PutObjectPart(ctx, srv.Bucket, tmpUpload, id, 1, strings.NewReader("part"), 4, minio.PutObjectPartOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)

	args := append([]string{"cache", "gc", "--max-age", "2s", "--grace", "1s", "--keep", keep, "--json"}, s3Args(t, srv, "tenants/gc")...)
	out, errOut, code := cli(t, ctx, args...)
	if code != exitOK {
		t.Fatalf("gc: exit %d\n%s\n%s", code, out, errOut)
	}
	var rep gc.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(rep.Paths) != 1 || !strings.HasSuffix(rep.Paths[0].StorePath, "-unreferenced") || rep.Kept != 2 {
		t.Errorf("report: %s", out)
	}
	for k := range unref {
		if _, err := bucket.Stat(ctx, k); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("collected %s still in the bucket: %v", k, err)
		}
	}
	for oi := range core.Client.ListObjects(ctx, srv.Bucket, minio.ListObjectsOptions{Prefix: "tenants/gc/.tmp/", Recursive: true}) {
		t.Errorf("interrupted upload left after gc: %s %v", oi.Key, oi.Err)
	}
	for u := range core.Client.ListIncompleteUploads(ctx, srv.Bucket, "tenants/gc/", true) {
		t.Errorf("incomplete multipart upload left after gc: %s %v", u.Key, u.Err)
	}
	for _, objs := range []map[string][]byte{dep, root} {
		for k := range objs {
			if _, err := bucket.Stat(ctx, k); err != nil {
				t.Errorf("kept %s: %v", k, err)
			}
		}
	}
}
