package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/builder"
	"codeberg.org/provenix/provenix/farm"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testnix"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/up"
	"codeberg.org/provenix/provenix/volunteer"
)

// farmChain is a chain of three derivations: each output holds its
// input's and its own line.
const farmChain = `{ busybox, message }:
let
  bb = builtins.path { name = "busybox"; path = builtins.dirOf busybox; filter = p: t: baseNameOf p == baseNameOf busybox; };
  mk = name: input: derivation { inherit name message input; system = builtins.currentSystem;
    builder = "${bb}/${baseNameOf busybox}";
    args = [ "sh" "-c" "{ if [ -n \"$input\" ]; then cat $input; fi; echo $name $message; } > $out" ]; };
  a = mk "farm-e2e-a" "";
  b = mk "farm-e2e-b" a;
in { top = mk "farm-e2e-top" b; }
`

// TestFarmEndToEnd: 'provenix submit' a chain to a running 'provenix up';
// its scheduler dispatches it, each derivation once its input is in the
// cache (the pusher's publication events drive it), to two volunteers
// with their own stores that substitute inputs from the cache; stock nix
// then installs the top from the cache, and the cache server's /farm
// page shows who built what.
func TestFarmEndToEnd(t *testing.T) {
	bb := testnix.Busybox(t)
	ctx := testctx.New(t, 5*time.Minute)
	dir := t.TempDir()
	stack := startStack(t, up.Config{DataDir: dir})
	paths := stack.Paths()
	pub := readPub(t, paths.CachePub())
	sub := submitChain(t, ctx, dir, bb)
	if sub.Ready != 1 {
		t.Fatalf("submitted: %d ready, want 1", sub.Ready)
	}

	// The stack runs the farm's scheduler: the volunteers are all it takes.
	signer, err := attest.LoadSigner(paths.BuilderKey())
	if err != nil {
		t.Fatal(err)
	}
	built := make(chan string, 8)
	wctx, stop := context.WithCancel(ctx)
	var done []chan error
	for i := range 2 {
		opts := nix.SubstituteOptions(stack.CacheURL(), pub)
		opts["sandbox"] = "false"
		b := &builder.Builder{Nix: &nix.Nix{Root: t.TempDir(), Options: opts}, Queue: stack.Conn(), Signer: signer,
			BuilderID: up.DefaultBuilderID, Tenant: up.DefaultTenant, Version: "test", StageClosures: true}
		v := &volunteer.Volunteer{Conn: stack.Conn(), Builder: b}
		w := &farm.Worker{Conn: stack.Conn(), Tenant: up.DefaultTenant, Machine: farm.Machine{System: "x86_64-linux"},
			Builder: up.DefaultBuilderID, Owner: fmt.Sprintf("volunteer-%d", i),
			Build: func(ctx context.Context, r *farm.Request) (*farm.BuildStats, error) {
				st, err := v.FarmBuild(ctx, r)
				if err == nil {
					built <- r.DrvPath
				}
				return st, err
			}}
		d := make(chan error, 1)
		done = append(done, d)
		go func() { d <- w.Run(wctx) }()
	}
	t.Cleanup(func() {
		stop()
		for _, d := range done {
			if err := <-d; err != nil {
				t.Errorf("worker: %v", err)
			}
		}
	})

	// farm status --watch follows the set to its end.
	stdout, stderr := statusWatch(t, ctx, dir, sub.Set.ID)
	if !strings.Contains(stdout, "3 done") || !strings.Contains(stderr, "3/3 done, 0 building, 0 waiting, 0 failed, 0 blocked, 0 disputed, finished") {
		t.Fatalf("farm status --watch:\n%s\n%s", stdout, stderr)
	}
	t.Logf("farm status --watch:\n%s", stderr)
	close(built)
	var order []string
	for d := range built {
		order = append(order, d[strings.Index(d, "-farm-e2e-")+len("-farm-e2e-"):])
	}
	if strings.Join(order, " ") != "a.drv b.drv top.drv" {
		t.Errorf("built in the order %v", order)
	}

	// Stock nix installs the top from the cache, its closure with it.
	st, err := farm.GetStatus(ctx, stack.Conn(), sub.Set.ID)
	if err != nil {
		t.Fatal(err)
	}
	var top string
	for _, d := range st.Derivations {
		if strings.HasSuffix(d.DrvPath, "-farm-e2e-top.drv") {
			g, err := farm.ReadGraph(ctx, []string{d.DrvPath}, nil)
			if err != nil {
				t.Fatal(err)
			}
			top = g.Node(d.DrvPath).Outputs["out"]
		}
	}
	// The farm's page on the cache server.
	resp, err := http.Get(stack.CacheURL() + up.FarmPath)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), "volunteer-") || !strings.Contains(string(page), "set-"+sub.Set.ID) ||
		!strings.Contains(string(page), "3 done") {
		t.Errorf("GET /farm: %d\n%s", resp.StatusCode, page)
	}
	client, err := substitute(t, ctx, stack.CacheURL(), pub, top)
	if err != nil {
		t.Fatalf("stock nix did not substitute %s: %v", top, err)
	}
	b, err := os.ReadFile(client.RealPath(top))
	if err != nil || strings.Count(string(b), "\n") != 3 || !strings.HasPrefix(string(b), "farm-e2e-a ") {
		t.Errorf("top's output %q, %v", b, err)
	}
}

// submitChain submits farmChain's top (a chain of three derivations) to
// the farm of the stack in dataDir, with extra flags for submit, and
// returns what submit printed.
func submitChain(t *testing.T, ctx context.Context, dataDir, busybox string, extra ...string) farm.Submitted {
	t.Helper()
	nixFile := filepath.Join(t.TempDir(), "chain.nix")
	if err := os.WriteFile(nixFile, []byte(farmChain), 0o644); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"submit", nixFile, "-A", "top", "--arg", "busybox", busybox, "--argstr", "message=" + uniqueMessage(t),
		"--data-dir", dataDir, "--json"}, extra...)
	stdout, stderr, code := cli(t, ctx, args...)
	if code != 0 {
		t.Fatalf("submit: exit %d\n%s\n%s", code, stdout, stderr)
	}
	var sub farm.Submitted
	if err := json.Unmarshal([]byte(stdout), &sub); err != nil || sub.Set.Size != 3 {
		t.Fatalf("submitted %s: %v", stdout, err)
	}
	return sub
}

// statusWatch follows set id with `farm status --watch` until it is
// finished, and returns what it printed.
func statusWatch(t *testing.T, ctx context.Context, dataDir, id string) (stdout, stderr string) {
	t.Helper()
	stdout, stderr, code := cli(t, ctx, "farm", "status", "--watch", id, "--data-dir", dataDir)
	if code != 0 {
		t.Fatalf("farm status --watch: exit %d\n%s\n%s", code, stdout, stderr)
	}
	return stdout, stderr
}
