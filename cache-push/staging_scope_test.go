package cachepush

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/queue"
)

// overwrite plays another publisher replacing the object under key with
// garbage that its meta describes truthfully (digest and size of the
// garbage), as anyone who may stage can.
func overwrite(t *testing.T, conn *queue.Conn, key, chunkID string) {
	t.Helper()
	ctx := testctx.New(t, 60*time.Second)
	js, err := jetstream.New(conn.NATS())
	if err != nil {
		t.Fatal(err)
	}
	garbage := []byte("another publisher's bytes")
	if _, err := js.Publish(ctx, "$O."+queue.BucketStaging+".C."+chunkID, garbage); err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(garbage)
	meta, _ := json.Marshal(&jetstream.ObjectInfo{ObjectMeta: jetstream.ObjectMeta{Name: key}, Bucket: queue.BucketStaging,
		NUID: chunkID, Size: uint64(len(garbage)), Chunks: 1, Digest: "SHA-256=" + base64.URLEncoding.EncodeToString(d[:])})
	m := nats.NewMsg("$O." + queue.BucketStaging + ".M." + base64.URLEncoding.EncodeToString([]byte(key)))
	m.Data = meta
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
}

// TestStagingOverwritten: another publisher replaces a staged NAR after
// the honest builder staged it (issue 11, finding 5). Under the
// builder's scoped key (what builders use) nothing changes: the pusher
// reads the builder's chunks and publishes the honest result. Under a
// shared key the result ends at once as "restage" (not "nar-mismatch",
// which counts against the builder), and is not retried forever.
func TestStagingOverwritten(t *testing.T) {
	cf := newClosureFixture(t, "", 1, nil)
	ctx := testctx.New(t, 60*time.Second)

	nar := narOf(t, "scoped")
	r, _ := cf.result(t, drvResult{name: "scoped", nar: nar})
	key := queue.ScopedKey(r.Outputs[0].StagingKey, "b0")
	if _, err := cf.conn.Stage(ctx, key, bytes.NewReader(nar)); err != nil {
		t.Fatal(err)
	}
	r.Outputs[0].StagingKey = key
	overwrite(t, cf.conn, key, queue.StagingScope("evil")+".x")
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	cf.process(t, r, data)
	if !cf.isVisible(t, r.Outputs[0].Path) {
		t.Fatal("honest result under a scoped key not published")
	}

	r, data = cf.result(t, drvResult{name: "shared"})
	overwrite(t, cf.conn, r.Outputs[0].StagingKey, "SHAREDX")
	err = cf.pusher.Process(ctx, subject(r), data, r.MsgID())
	if !errors.Is(err, queue.ErrPermanent) || !strings.Contains(err.Error(), "("+ReasonRestage+")") {
		t.Fatalf("overwritten shared key: %v, want a permanent %q rejection", err, ReasonRestage)
	}
}

// TestRelayedWithOtherStagingKey: anyone who may publish results relays
// b0's signed result (its vote pending) with the unsigned staging key
// pointed at bytes of its own. In another builder's scope the relay is
// refused and b0's vote keeps its key; under a shared key it replaces
// b0's vote, but the NAR is then read from the staged object of b1, whose
// result completes the quorum: the path is published and b1's result is
// not refused for a key it did not write.
func TestRelayedWithOtherStagingKey(t *testing.T) {
	for _, shared := range []bool{false, true} {
		t.Run(map[bool]string{false: "other-scope", true: "shared"}[shared], func(t *testing.T) {
			cf := newClosureFixture(t, "quorum: {min: 2}\n", 3, nil)
			ctx := testctx.New(t, 30*time.Second)
			r0, d0 := cf.result(t, drvResult{name: "victim", builder: "b0"})
			cf.process(t, r0, d0)
			key := queue.ScopedKey("nar/relayed", "b2")
			if shared {
				key = "nar/relayed"
			}
			garbage := bytes.Repeat([]byte{'x'}, int(r0.Outputs[0].NarSize))
			if _, err := cf.conn.Stage(ctx, key, bytes.NewReader(garbage)); err != nil {
				t.Fatal(err)
			}
			relay := *r0
			relay.Outputs = slices.Clone(r0.Outputs)
			relay.Outputs[0].StagingKey = key
			data, _ := json.Marshal(&relay)
			err := cf.pusher.Process(ctx, subject(&relay), data, "relayed")
			if !shared && (!errors.Is(err, queue.ErrPermanent) || !strings.Contains(err.Error(), ReasonInconsistent)) {
				t.Fatalf("relayed with a key in b2's scope: %v, want a %s rejection", err, ReasonInconsistent)
			}
			if shared && err != nil {
				t.Fatalf("relayed with a shared key: %v", err)
			}
			r1, d1 := cf.result(t, drvResult{name: "victim", builder: "b1"})
			if err := cf.pusher.Process(ctx, subject(r1), d1, r1.MsgID()); err != nil {
				t.Fatalf("b1's result, which completes the quorum: %v", err)
			}
			if !cf.isVisible(t, storePath("victim")) {
				t.Fatal("the agreed path is not published")
			}
		})
	}
}
