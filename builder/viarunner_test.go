package builder

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/internal/testnix"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/runner/capture"
)

// TestBuildViaRunner: over a real capture socket, each derivation is
// realised here before the runner is asked about it, and the runner's
// answer reaches the caller; a refusal stops the build with the results
// the runner gave; a derivation that does not build is never sent.
func TestBuildViaRunner(t *testing.T) {
	bb := testnix.Busybox(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nx := &nix.Nix{Root: t.TempDir(), Options: offline()}

	var mu sync.Mutex
	var asked []string
	refuse := false
	sock := filepath.Join(t.TempDir(), "runner.sock")
	srv, err := capture.Listen(sock, "job-token", -1, -1, func(ctx context.Context, drvs []string) ([]capture.Result, error) {
		mu.Lock()
		asked = append(asked, drvs...)
		no := refuse
		mu.Unlock()
		// The runner checks the outputs in its own store: here, the same.
		drv, err := nx.ReadDerivation(drvs[0])
		if err != nil {
			return nil, err
		}
		out := drv.Outputs["out"].Path
		if _, err := nx.PathInfos(ctx, out); err != nil {
			return nil, err
		}
		res := []capture.Result{{DrvPath: drvs[0], BuilderID: "runner-1", Outputs: []capture.Output{{Name: "out", Path: out}}}}
		if no {
			return res, errors.New("policy says no")
		}
		return res, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	rc := &capture.Client{Socket: sock, Token: "job-token"}
	askedNow := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), asked...)
	}

	tg := helloTarget(t, bb, "")
	var realising []string
	var builds []RunnerBuild
	o := ViaRunnerOptions{
		Realising: func(drv string) { realising = append(realising, drv) },
		Attested:  func(rb RunnerBuild) { builds = append(builds, rb) },
	}
	if err := BuildViaRunner(ctx, nx, rc, []Target{tg}, o); err != nil {
		t.Fatal(err)
	}
	if got := askedNow(); len(realising) != 1 || len(builds) != 1 || len(got) != 1 || got[0] != realising[0] {
		t.Fatalf("realising %v, attested %+v, runner asked %v: want the one derivation each", realising, builds, got)
	}
	rb := builds[0]
	if rb.DrvPath != realising[0] || rb.Built <= 0 || len(rb.Results) != 1 || rb.Results[0].BuilderID != "runner-1" ||
		!strings.HasPrefix(rb.Results[0].Outputs[0].Path, "/nix/store/") {
		t.Fatalf("attested %+v", rb)
	}

	// The runner refuses: the error names the derivation and the reason,
	// and the results it sent still reach the caller.
	mu.Lock()
	refuse = true
	mu.Unlock()
	builds = nil
	err = BuildViaRunner(ctx, nx, rc, []Target{tg}, o)
	if err == nil || !strings.Contains(err.Error(), "the runner did not attest "+rb.DrvPath) || !strings.Contains(err.Error(), "policy says no") {
		t.Fatalf("refusal: %v", err)
	}
	if len(builds) != 1 || len(builds[0].Results) != 1 {
		t.Fatalf("refusal: attested %+v, want the runner's result", builds)
	}

	// A derivation that does not build is never sent to the runner, and
	// the targets after it are not built.
	mu.Lock()
	asked = nil
	mu.Unlock()
	missing := Target{Installable: attest.Installable{Kind: KindDrv, Ref: "/nix/store/00000000000000000000000000000000-missing.drv"}}
	err = BuildViaRunner(ctx, nx, rc, []Target{missing, tg}, ViaRunnerOptions{})
	if got := askedNow(); err == nil || len(got) != 0 {
		t.Fatalf("missing derivation: %v, runner asked %v", err, got)
	}
	// A wrong token is the runner's refusal too.
	bad := &capture.Client{Socket: sock, Token: "other-job"}
	if err := BuildViaRunner(ctx, nx, bad, []Target{tg}, ViaRunnerOptions{}); !errors.Is(err, capture.ErrUnauthorized) {
		t.Fatalf("wrong token: %v", err)
	}
}
