package cachepush

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/derivation"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/queue"
)

// TestStatus reads real votes and waiting records from an embedded NATS
// and checks what `provenix status` reports: the tally's verdict, which
// votes agree, and what a decided path waits for.
func TestStatus(t *testing.T) {
	ctx := testctx.New(t, 60*time.Second)
	conn := newFixture(t).conn // a real embedded NATS
	pol := tallyPolicy(t)      // min 2 distinct owners; a and a2 are one owner
	const tenant = "default"
	vote := func(sp, builder, hash, nixSig string) {
		t.Helper()
		b, _ := json.Marshal(Vote{Tenant: tenant, StorePath: sp, Builder: builder, System: "x86_64-linux", NarSHA256: hash,
			NarSize: 10, NixSig: nixSig, Time: time.Now().UTC()})
		if err := conn.KVPut(ctx, queue.BucketVotes, queue.VoteKey(tenant, sp, builder), b); err != nil {
			t.Fatal(err)
		}
	}
	wait := func(sp string, missing ...string) {
		t.Helper()
		b, _ := json.Marshal(Waiting{Version: WaitingVersion, Tenant: tenant, StorePath: sp, NarSHA256: "h", Missing: missing, Since: time.Now().UTC()})
		if err := conn.KVPut(ctx, queue.BucketWaiting, queue.WaitingKey(tenant, sp), b); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("no votes", func(t *testing.T) {
		ps, err := Status(ctx, conn, pol, tenant, storePath("status-none"))
		if err != nil {
			t.Fatal(err)
		}
		if ps.Verdict != VerdictPending || !strings.HasPrefix(ps.Why, "no votes") || ps.Votes == nil || len(ps.Votes) != 0 || ps.WaitingSince != nil {
			t.Fatalf("%+v", ps)
		}
	})

	t.Run("agreed with a minority", func(t *testing.T) {
		sp := storePath("status-agreed")
		vote(sp, "a", "h1", "cache-1:sig")
		vote(sp, "b", "h1", "")
		vote(sp, "c", "h2", "")
		ps, err := Status(ctx, conn, pol, tenant, sp)
		if err != nil {
			t.Fatal(err)
		}
		if ps.Verdict != VerdictAgreed || ps.Winner != "h1" || ps.System != "x86_64-linux" || len(ps.Votes) != 3 {
			t.Fatalf("%+v", ps)
		}
		agree := map[string]bool{}
		for _, v := range ps.Votes {
			agree[v.Builder] = v.Agrees
		}
		if !agree["a"] || !agree["b"] || agree["c"] || !ps.Votes[0].NixSig || ps.Votes[1].NixSig {
			t.Fatalf("votes %+v", ps.Votes)
		}
	})

	t.Run("pending: one owner twice", func(t *testing.T) {
		sp := storePath("status-pending")
		vote(sp, "a", "h1", "")
		vote(sp, "a2", "h1", "")
		ps, err := Status(ctx, conn, pol, tenant, sp)
		if err != nil {
			t.Fatal(err)
		}
		if ps.Verdict != VerdictPending || slices.ContainsFunc(ps.Votes, func(v StatusVote) bool { return v.Agrees }) {
			t.Fatalf("%+v", ps)
		}
	})

	t.Run("content-addressed, waiting", func(t *testing.T) {
		sp, ref := storePath("status-ca"), storePath("status-ref")
		wait(sp, ref)
		ps, err := Status(ctx, conn, pol, tenant, sp)
		if err != nil {
			t.Fatal(err)
		}
		if ps.Verdict != VerdictWaiting || ps.Why != "decided by its content address; not visible until its references are" ||
			!slices.Equal(ps.WaitingFor, []string{ref}) || ps.WaitingSince == nil {
			t.Fatalf("%+v", ps)
		}
	})

	t.Run("agreed, waiting", func(t *testing.T) {
		sp, ref := storePath("status-agreed-waiting"), storePath("status-ref2")
		vote(sp, "a", "h1", "")
		vote(sp, "b", "h1", "")
		wait(sp, ref)
		ps, err := Status(ctx, conn, pol, tenant, sp)
		if err != nil {
			t.Fatal(err)
		}
		if ps.Verdict != VerdictAgreed || !strings.HasSuffix(ps.Why, "; not visible until its references are") || len(ps.WaitingFor) != 1 {
			t.Fatalf("%+v", ps)
		}
	})
}

func TestStatusPaths(t *testing.T) {
	sp := storePath("plain")
	if got, err := StatusPaths(sp, ""); err != nil || !slices.Equal(got, []string{sp}) {
		t.Fatalf("a store path: %v, %v", got, err)
	}
	// A .drv stands for its outputs, read from the (chroot) store.
	d := &derivation.Derivation{
		Outputs:          map[string]*derivation.Output{"out": {}, "dev": {}},
		InputDerivations: map[string][]string{},
		Platform:         "x86_64-linux",
		Builder:          "/bin/sh",
		Env:              map[string]string{"name": "two", "system": "x86_64-linux", "builder": "/bin/sh", "out": "", "dev": ""},
	}
	outs, err := d.CalculateOutputPaths(nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, p := range outs {
		d.Outputs[name].Path, d.Env[name] = p, p
	}
	drvPath, err := d.DrvPath()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "nix", "store"), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(root, drvPath))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.WriteDerivation(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	got, err := StatusPaths(drvPath, root)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{outs["dev"], outs["out"]}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("outputs %v, want %v", got, want)
	}
	if _, err := StatusPaths(storePath("absent")+".drv", root); err == nil {
		t.Fatal("an absent .drv was read")
	}
}
