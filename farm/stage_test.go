package farm

import (
	"context"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/nix"
)

// TestStageClosure stages a real .drv closure and reads back every
// derivation of the graph from it; requests carry its key.
func TestStageClosure(t *testing.T) {
	url, conn := setup(t)
	expr := `let mk = name: deps: derivation { inherit name; system = "x86_64-linux"; builder = "/bin/sh";
      args = [ "-c" "echo ${name} ${toString deps} > $out" ]; };
    a = mk "farm-stage-a" [];
in mk "farm-stage-top" [ a (mk "farm-stage-b" [ a ]) ]`
	out, err := exec.Command("nix-instantiate", "--expr", expr).Output()
	if err != nil {
		t.Fatalf("nix-instantiate: %v", err)
	}
	root := strings.TrimSpace(string(out))
	nx := &nix.Nix{}
	id := NewSetID()
	key, err := StageClosure(testctx.New(t, time.Minute), conn, nx, "submitter-1", id, []string{root})
	if err != nil {
		t.Fatal(err)
	}
	if key != ClosureKey("submitter-1", id) {
		t.Errorf("key %s", key)
	}
	rc, _, err := conn.OpenStaged(testctx.New(t, time.Minute), key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var staged []string
	if err := nix.ReadExportDerivations(rc, nix.ExportDrvLimits{}, func(p string, _ []byte) error {
		staged = append(staged, p)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	g, err := ReadGraph(context.Background(), []string{root}, nil)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(staged)
	if want := slices.Sorted(slices.Values(g.Order())); !slices.Equal(staged, want) {
		t.Errorf("staged %v, want the graph's %v", staged, want)
	}

	// The key travels in the requests.
	cache := newMemCache()
	sub, err := Submit(testctx.New(t, time.Minute), conn, SubmitOptions{Tenant: tenant, ID: id, Roots: []string{root}, Closure: key, Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *Request, 4)
	testWorkerFunc(t, url, "b1", func(_ context.Context, r *Request) (*BuildStats, error) {
		got <- r
		return &BuildStats{}, nil
	})
	startScheduler(t, url, cache, "g1")
	select {
	case r := <-got:
		if r.Closure != key || r.Set != sub.Set.ID || !strings.HasSuffix(r.DrvPath, "-farm-stage-a.drv") {
			t.Errorf("request %+v", r)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no request")
	}
}
