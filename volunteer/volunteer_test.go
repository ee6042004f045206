package volunteer

// Integration tests with real parts: the host's Nix builds in chroot
// stores under t.TempDir() (the host store is not touched, and the
// volunteer really builds), and an embedded NATS server carries requests,
// staging and results. A missing tool fails the test; never skipped.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/builder"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testkey"
	"codeberg.org/provenix/provenix/internal/testnix"
	"codeberg.org/provenix/provenix/internal/testqueue"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/queue"
	natsserver "codeberg.org/provenix/provenix/queue/server"
	"codeberg.org/provenix/provenix/usage"
)

const tenant = "t1"

// startQueue runs an embedded NATS server with the streams in place.
func startQueue(t *testing.T) *queue.Conn {
	t.Helper()
	_, c := testqueue.Embedded(t, natsserver.Config{})
	return c
}

// newBuilder is a builder with its own chroot store, key and id, offline.
func newBuilder(t *testing.T, conn *queue.Conn, id string) (*builder.Builder, *ecdsa.PrivateKey) {
	t.Helper()
	signer, key := testkey.Signer(t)
	opts := nix.OfflineOptions()
	opts["sandbox"] = "false" // a chroot store builds in its own chroot anyway
	opts["narinfo-cache-negative-ttl"] = "0"
	return &builder.Builder{
		Nix: &nix.Nix{Root: t.TempDir(), Options: opts}, Queue: conn, Signer: signer,
		BuilderID: id, Tenant: tenant, Version: "test", StageClosures: true,
	}, key
}

// buildSample has b build examples/hello.nix with a unique message, so
// Nix really builds, and publish it.
func buildSample(t *testing.T, ctx context.Context, b *builder.Builder, busybox string) builder.Published {
	t.Helper()
	m := make([]byte, 8)
	rand.Read(m)
	pubs, err := b.Build(ctx, builder.Target{
		Installable: attest.Installable{Kind: "file", File: "../examples/hello.nix", Attr: "hello"},
		Args:        map[string]string{"busybox": busybox},
		ArgStrs:     map[string]string{"message": t.Name() + "-" + hex.EncodeToString(m)},
	})
	if err != nil || len(pubs) != 1 || len(pubs[0].Outputs) != 1 {
		t.Fatalf("build: %v %v", pubs, err)
	}
	return pubs[0]
}

func request(p builder.Published) *queue.RebuildRequest {
	return &queue.RebuildRequest{
		Version: queue.RebuildVersion, Tenant: tenant, System: p.System, DrvPath: p.DrvPath,
		Outputs: []string{p.Outputs[0].Path}, Closure: queue.ScopedKey(queue.ClosureKey(p.DrvPath), "builder-a"), Requested: time.Now(),
	}
}

func publishRequest(t *testing.T, conn *queue.Conn, r *queue.RebuildRequest) {
	t.Helper()
	if dup, err := conn.PublishRebuild(testctx.New(t, 10*time.Second), r); err != nil || dup {
		t.Fatalf("PublishRebuild: dup %v, %v", dup, err)
	}
}

// runOnce runs v for one request and returns its outcome and error.
func runOnce(t *testing.T, v *Volunteer) (Outcome, error) {
	t.Helper()
	var mu sync.Mutex
	var outs []Outcome
	v.Once = true
	v.OnOutcome = func(o Outcome) {
		mu.Lock()
		defer mu.Unlock()
		outs = append(outs, o)
	}
	err := v.Run(testctx.New(t, 3*time.Minute))
	mu.Lock()
	defer mu.Unlock()
	if len(outs) != 1 {
		t.Fatalf("%d outcomes, want 1 (Run: %v)", len(outs), err)
	}
	return outs[0], err
}

func streamMsgs(t *testing.T, conn *queue.Conn, stream string) uint64 {
	t.Helper()
	s, err := conn.JetStream().Stream(testctx.New(t, 10*time.Second), stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(testctx.New(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// lastResult is the last result published for system.
func lastResult(t *testing.T, conn *queue.Conn, system string) *queue.Result {
	t.Helper()
	s, err := conn.JetStream().Stream(testctx.New(t, 10*time.Second), queue.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	subj, _ := queue.ResultsSubject(tenant, system)
	m, err := s.GetLastMsgForSubject(testctx.New(t, 10*time.Second), subj)
	if err != nil {
		t.Fatal(err)
	}
	r, err := queue.DecodeResult(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// records is a usage.Recorder that keeps what it is given.
type records struct {
	mu   sync.Mutex
	recs []*usage.Record
}

func (r *records) Record(_ context.Context, rec *usage.Record) error {
	rec.Version, rec.ID = usage.Version, usage.NewID() // as usage.Publisher does
	if err := rec.Validate(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec)
	return nil
}

func (r *records) all() []*usage.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.recs)
}

func TestVolunteer(t *testing.T) {
	bb := testnix.Busybox(t)
	conn := startQueue(t)
	ctx := testctx.New(t, 5*time.Minute)
	a, _ := newBuilder(t, conn, "builder-a")
	a.StageClosures = true
	vb, vkey := newBuilder(t, conn, "volunteer-b")
	var logs bytes.Buffer
	var logMu sync.Mutex
	recs := &records{}
	v := &Volunteer{Conn: conn, Builder: vb, Logger: slogTo(&logs, &logMu), Usage: recs}

	t.Run("rebuilds and votes", func(t *testing.T) {
		pa := buildSample(t, ctx, a, bb)
		v.Systems = []string{pa.System}
		// A request for a system this volunteer does not serve is never
		// taken: it stays in the work queue.
		other := request(pa)
		other.System, other.DrvPath = "riscv64-linux", strings.Replace(pa.DrvPath, "-provenix-hello", "-other", 1)
		publishRequest(t, conn, other)
		publishRequest(t, conn, request(pa))

		out, err := runOnce(t, v)
		if err != nil || out.Action != ActionBuilt || out.Published == nil {
			t.Fatalf("outcome %+v, Run: %v", out, err)
		}
		t.Logf("volunteer rebuild of the sample: %s in all (build %s, attest and publish %s)",
			out.Took.Round(time.Millisecond), out.Published.Built.Round(time.Millisecond), out.Published.Publish.Round(time.Millisecond))
		got := out.Published.Outputs[0]
		if got.Path != pa.Outputs[0].Path || got.NarHash != pa.Outputs[0].NarHash {
			t.Fatalf("volunteer output %s %x, builder A %s %x", got.Path, got.NarHash, pa.Outputs[0].Path, pa.Outputs[0].NarHash)
		}
		// Built in its own store, not copied.
		regs, err := vb.Nix.PathInfos(ctx, got.Path)
		if err != nil || !regs[0].Ultimate {
			t.Fatalf("volunteer's output not built there: %+v %v", regs, err)
		}
		// Its published result verifies for its own builder id and key.
		res := lastResult(t, conn, pa.System)
		if res.Builder != "volunteer-b" || res.DrvPath != pa.DrvPath {
			t.Fatalf("last result from %s for %s", res.Builder, res.DrvPath)
		}
		ver, err := attest.NewVerifier(nil, attest.WithKeys(attest.TrustedBuilder{ID: "volunteer-b", PublicKey: &vkey.PublicKey}))
		if err != nil {
			t.Fatal(err)
		}
		want := []attest.Subject{{Path: got.Path, NarHash: pa.Outputs[0].NarHash}}
		verified, err := ver.Verify(res.Bundle, want)
		if err != nil {
			t.Fatalf("volunteer's bundle: %v", err)
		}
		if verified.Builder.ID != "volunteer-b" {
			t.Fatalf("verified for %s", verified.Builder.ID)
		}
		// The same key does not speak for builder A.
		asA, _ := attest.NewVerifier(nil, attest.WithKeys(attest.TrustedBuilder{ID: "builder-a", PublicKey: &vkey.PublicKey}))
		if _, err := asA.Verify(res.Bundle, want); err == nil {
			t.Fatal("volunteer's bundle verified as builder A")
		}
		if n := streamMsgs(t, conn, queue.StreamRebuild); n != 1 {
			t.Fatalf("%d requests left, want 1 (the riscv64-linux one)", n)
		}
		// Its usage: the build's CPU, the NAR it built, what it staged.
		rs := recs.all()
		if len(rs) != 1 {
			t.Fatalf("%d usage records, want 1", len(rs))
		}
		r := rs[0]
		if r.Kind != usage.KindVolunteer || r.Tenant != tenant || r.Builder != "volunteer-b" || r.DrvPath != pa.DrvPath ||
			r.BytesBuilt != int64(got.NarSize) || r.BytesStaged < int64(got.NarSize) || r.CPUMicros <= 0 || r.Wall() < out.Published.Built {
			t.Errorf("usage record %+v; built %d bytes in %s", r, got.NarSize, out.Published.Built)
		}
	})

	t.Run("skips what it voted on", func(t *testing.T) {
		pa := buildSample(t, ctx, a, bb)
		if err := conn.KVPut(ctx, queue.BucketVotes, queue.VoteKey(tenant, pa.Outputs[0].Path, "volunteer-b"), []byte(`{"fake":true}`)); err != nil {
			t.Fatal(err)
		}
		before := streamMsgs(t, conn, queue.StreamResults)
		publishRequest(t, conn, request(pa))
		out, err := runOnce(t, v)
		if err != nil || out.Action != ActionSkipped || out.Published != nil {
			t.Fatalf("outcome %+v, Run: %v", out, err)
		}
		if after := streamMsgs(t, conn, queue.StreamResults); after != before {
			t.Fatalf("%d results published", after-before)
		}
		if inv, _ := vb.Nix.Invalid(ctx, pa.DrvPath); len(inv) != 1 {
			t.Fatal("skipped request's closure was imported")
		}
		if n := streamMsgs(t, conn, queue.StreamRebuild); n != 1 {
			t.Fatalf("%d requests left, want 1 (skipped is acked)", n)
		}
	})

	t.Run("refuses a truncated closure", func(t *testing.T) {
		pa := buildSample(t, ctx, a, bb)
		key := queue.ScopedKey(queue.ClosureKey(pa.DrvPath), "builder-a")
		rc, _, err := conn.OpenStaged(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		exp, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Stage(ctx, key, bytes.NewReader(exp[:len(exp)-64])); err != nil {
			t.Fatal(err)
		}
		before := streamMsgs(t, conn, queue.StreamResults)
		publishRequest(t, conn, request(pa))
		out, err := runOnce(t, v)
		if !errors.Is(err, nix.ErrBadExport) || out.Action != ActionFailed || !strings.Contains(err.Error(), "truncated") {
			t.Fatalf("outcome %+v, Run: %v", out, err)
		}
		t.Logf("truncated closure: %v", err)
		if after := streamMsgs(t, conn, queue.StreamResults); after != before {
			t.Fatalf("%d results published", after-before)
		}
		if inv, _ := vb.Nix.Invalid(ctx, pa.DrvPath, pa.Outputs[0].Path); len(inv) != 2 {
			t.Fatalf("the .drv or output of a truncated closure is valid: invalid only %v", inv)
		}
		if n := streamMsgs(t, conn, queue.StreamRebuild); n != 1 {
			t.Fatalf("%d requests left, want 1 (a failure is terminated)", n)
		}
		logMu.Lock()
		defer logMu.Unlock()
		if !strings.Contains(logs.String(), "rebuild request failed; not retrying it") {
			t.Errorf("no log line for the failure:\n%s", logs.String())
		}
	})

	t.Run("refuses a request that lies about the outputs", func(t *testing.T) {
		pa := buildSample(t, ctx, a, bb)
		r := request(pa)
		r.Outputs = []string{"/nix/store/00000000000000000000000000000000-provenix-hello"}
		publishRequest(t, conn, r)
		out, err := runOnce(t, v)
		if !errors.Is(err, ErrRequest) || out.Action != ActionFailed {
			t.Fatalf("outcome %+v, Run: %v", out, err)
		}
	})

	t.Run("checks a copy it did not build", func(t *testing.T) {
		// Volunteer c holds A's output, imported as is (the way a
		// substituted path arrives): it must rebuild it with --check
		// before it votes.
		pa := buildSample(t, ctx, a, bb)
		vc, ckey := newBuilder(t, conn, "volunteer-c")
		var exp bytes.Buffer
		paths, err := a.Nix.Requisites(ctx, pa.Outputs[0].Path)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Nix.Export(ctx, &exp, paths...); err != nil {
			t.Fatal(err)
		}
		imp := exec.CommandContext(ctx, "nix-store", "--store", vc.Nix.Root, "--import")
		imp.Stdin = &exp
		if b, err := imp.CombinedOutput(); err != nil {
			t.Fatalf("nix-store --import: %v\n%s", err, b)
		}
		publishRequest(t, conn, request(pa))
		out, err := runOnce(t, &Volunteer{Conn: conn, Builder: vc, Systems: []string{pa.System}})
		if err != nil || out.Action != ActionChecked {
			t.Fatalf("outcome %+v, Run: %v", out, err)
		}
		ver, _ := attest.NewVerifier(nil, attest.WithKeys(attest.TrustedBuilder{ID: "volunteer-c", PublicKey: &ckey.PublicKey}))
		if _, err := ver.Verify(lastResult(t, conn, pa.System).Bundle, []attest.Subject{{Path: pa.Outputs[0].Path, NarHash: pa.Outputs[0].NarHash}}); err != nil {
			t.Fatal(err)
		}
	})
}

func slogTo(w io.Writer, mu *sync.Mutex) *slog.Logger {
	return slog.New(slog.NewTextHandler(&lockedWriter{w: w, mu: mu}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
