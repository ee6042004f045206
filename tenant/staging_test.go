package tenant

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testnats"
	"codeberg.org/provenix/provenix/queue"
)

// TestStagingScopes runs issue 11's finding 5 against the tenant
// permission sets: tenant a's runner (builder a-runner) and a second
// runner user of the same account building as a-evil. The evil runner
// cannot write into a-runner's scope, cannot purge staging, and what it
// can write (metas: one subject token, not scoped) neither replaces nor
// corrupts what a-runner staged, before or after it stages.
func TestStagingScopes(t *testing.T) {
	dir := t.TempDir()
	// 1 GiB, not the default 10: see startTenants.
	tn, err := Add(Options{Name: "a", Dir: filepath.Join(dir, "a"), Limits: Limits{MaxFile: 1 << 30}})
	if err != nil {
		t.Fatal(err)
	}
	// A second runner user in a's account, as an operator adds one per
	// builder: RunnerPermissions for its own builder id.
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := kp.Seed()
	pub, _ := kp.PublicKey()
	evilSeed := filepath.Join(dir, "evil.nk")
	if err := os.WriteFile(evilSeed, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	perms, err := queue.RunnerPermissions("a", "a-evil")
	if err != nil {
		t.Fatal(err)
	}
	user := fmt.Sprintf("    {nkey: %s, permissions: {publish: {allow: %s}, subscribe: {allow: %s}}}\n  ]\n}\n",
		pub, confList(perms.Publish), confList(perms.Subscribe))
	snippet := strings.TrimSuffix(tn.Snippet, "  ]\n}\n") + user
	if err := os.WriteFile(tn.Path(FileAccount), []byte(snippet), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := testnats.Start(t, dir, "accounts {\n  include \"a/"+FileAccount+"\"\n}\n", true)
	c := &cluster{srv: srv, tenants: map[string]*Tenant{"a": tn}}
	pusher, runner := c.connect(t, "a", queue.RolePusher), c.connect(t, "a", queue.RoleRunner)
	evil, err := queue.Connect(testctx.New(t, 20*time.Second), srv.URL, queue.WithNKeySeedFile(evilSeed))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(evil.Close)
	if err := pusher.EnsureStreams(testctx.New(t, 20*time.Second), queue.StreamOptions{}); err != nil {
		t.Fatal(err)
	}

	honest := make([]byte, 300<<10) // three chunks
	rand.Read(honest)
	sum := sha256.Sum256(honest)
	key := queue.ScopedKey(queue.StagingKey(hex.EncodeToString(sum[:])), "a-runner")
	forge := func() {
		t.Helper()
		// Garbage in its own scope, and a meta for a-runner's key that
		// points at it and claims a-runner's content.
		chunks := "$O." + queue.BucketStaging + ".C." + queue.StagingScope("a-evil") + ".forged"
		js, err := jetstream.New(evil.NATS())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.Publish(testctx.New(t, 20*time.Second), chunks, []byte("garbage")); err != nil {
			t.Fatalf("evil stages in its own scope: %v", err)
		}
		d := sha256.Sum256(honest)
		meta, _ := json.Marshal(&jetstream.ObjectInfo{ObjectMeta: jetstream.ObjectMeta{Name: key}, Bucket: queue.BucketStaging,
			NUID: queue.StagingScope("a-evil") + ".forged", Size: uint64(len(honest)), Chunks: 3,
			Digest: "SHA-256=" + base64.URLEncoding.EncodeToString(d[:])})
		m := nats.NewMsg("$O." + queue.BucketStaging + ".M." + base64.URLEncoding.EncodeToString([]byte(key)))
		m.Data = meta
		if _, err := js.PublishMsg(testctx.New(t, 20*time.Second), m); err != nil {
			t.Fatalf("evil writes a meta: %v", err)
		}
	}
	readBack := func(what string) {
		t.Helper()
		rc, _, err := pusher.OpenStaged(testctx.New(t, 20*time.Second), key)
		if err != nil {
			t.Fatalf("%s: pusher opens the staged NAR: %v", what, err)
		}
		defer rc.Close()
		got, err := io.ReadAll(rc)
		if err != nil || !bytes.Equal(got, honest) {
			t.Fatalf("%s: pusher read %d bytes, %v; want the honest %d", what, len(got), err, len(honest))
		}
	}

	// Pre-poisoned: the honest Stage does not take it for its own.
	forge()
	if info, err := runner.Stage(testctx.New(t, 20*time.Second), key, bytes.NewReader(honest)); err != nil || info.Reused {
		t.Fatalf("honest Stage over a forged meta: %+v %v", info, err)
	}
	readBack("after a pre-poisoned meta")

	// Nor can a runner wipe the staging stream, every builder's staged
	// NARs, with a "Nats-Rollup: all" header on a chunk in its own scope
	// or on a meta: the stream refuses rollups.
	for _, subj := range []string{
		"$O." + queue.BucketStaging + ".C." + queue.StagingScope("a-runner") + ".wipe",
		"$O." + queue.BucketStaging + ".M." + base64.URLEncoding.EncodeToString([]byte("closure/wipe")),
	} {
		if ack := rollupAll(t, c, "a", queue.RoleRunner, subj); !strings.Contains(ack, "rollup") {
			t.Errorf("a runner's publish on %s with Nats-Rollup: all: %s, want the rollup refused", subj, ack)
		}
	}
	readBack("after a runner's rollups")

	// Overwriting a-runner's object: its chunks are out of reach, its
	// meta is ignored.
	start := time.Now()
	_, err = evil.Stage(testctx.New(t, 20*time.Second), queue.ScopedKey("closure/y.drv", "a-runner"), bytes.NewReader([]byte("evil content")))
	fast(t, "evil stages in a-runner's scope", start, err, queue.ErrPermissionDenied)
	// Under the NAR's key it finds the honest content and leaves it.
	if info, err := evil.Stage(testctx.New(t, 20*time.Second), key, bytes.NewReader([]byte("evil content"))); err != nil || !info.Reused {
		t.Fatalf("evil Stage under a-runner's NAR key: %+v %v", info, err)
	}
	forge()
	readBack("after a forged meta")

	// Purge and delete: denied.
	js, err := jetstream.New(evil.NATS())
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(testctx.New(t, 20*time.Second), "OBJ_"+queue.BucketStaging)
	if err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithTimeout(testctx.New(t, 20*time.Second), 2*time.Second)
	err = stream.Purge(pctx)
	cancel()
	if err == nil {
		t.Fatal("evil runner purged the staging stream")
	}
	dctx, cancel := context.WithTimeout(testctx.New(t, 20*time.Second), 2*time.Second)
	_ = evil.DeleteStaged(dctx, key) // the meta may go; the chunks stay
	cancel()
	readBack("after purge and delete attempts")

	// The runner's own failed upload ends with the failure, at once:
	// it no longer cleans up (it may not purge), nor waits to.
	start = time.Now()
	boom := errors.New("dump failed")
	_, err = runner.Stage(testctx.New(t, 20*time.Second), queue.ScopedKey("closure/x.drv", "a-runner"),
		io.MultiReader(bytes.NewReader(honest), iotest.ErrReader(boom)))
	if !errors.Is(err, boom) || errors.Is(err, queue.ErrPermissionDenied) {
		t.Fatalf("failed upload: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("failed upload took %s", d)
	}
}
