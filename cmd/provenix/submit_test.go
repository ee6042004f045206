package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"codeberg.org/provenix/provenix/farm"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testlog"
	"codeberg.org/provenix/provenix/internal/testqueue"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/queue"
	natsserver "codeberg.org/provenix/provenix/queue/server"
	"codeberg.org/provenix/provenix/up"
)

// TestSubmitAndFarmCommands submits a real .nix file's chain to a farm
// with no scheduler running, reads its status, and cancels it.
func TestSubmitAndFarmCommands(t *testing.T) {
	ctx := testctx.New(t, 2*time.Minute)
	dir := t.TempDir()
	natsURL, qc := farmNATS(t)
	cacheURL, keyFile := emptyCache(t, dir)
	nixFile := filepath.Join(dir, "chain.nix")
	if err := os.WriteFile(nixFile, []byte(`{ tag ? "x" }:
let mk = name: deps: derivation { inherit name; system = "x86_64-linux"; builder = "/bin/sh";
      args = [ "-c" "echo ${name} ${tag} ${toString deps} > $out" ]; };
    a = mk "farm-cli-a" [];
    b = mk "farm-cli-b" [ a ];
in { top = mk "farm-cli-top" [ b ]; other = mk "farm-cli-other" [ a ]; }
`), 0o644); err != nil {
		t.Fatal(err)
	}
	conn := []string{"--nats-url", natsURL, "--data-dir", dir}

	if _, stderr, code := cli(t, ctx, append([]string{"submit", filepath.Join(dir, "notes.txt")}, conn...)...); code != exitUsageErr || !strings.Contains(stderr, "want a .drv") {
		t.Errorf("submit of a non-derivation: exit %d\n%s", code, stderr)
	}

	tag := uniqueMessage(t)
	stdout, stderr, code := cli(t, ctx, append([]string{"submit", nixFile, "-A", "top", "-A", "other", "--argstr", "tag", tag,
		"--cache", cacheURL, "--cache-key", keyFile, "--quorum", "2", "--json"}, conn...)...)
	if code != 0 {
		t.Fatalf("submit: exit %d\n%s\n%s", code, stdout, stderr)
	}
	var sub struct {
		Set struct {
			ID     string   `json:"id"`
			Size   int      `json:"size"`
			Quorum int      `json:"quorum"`
			Roots  []string `json:"roots"`
		}
		Skipped, Ready int
	}
	if err := json.Unmarshal([]byte(stdout), &sub); err != nil {
		t.Fatalf("submit --json: %v\n%s", err, stdout)
	}
	if sub.Set.Size != 4 || sub.Set.Quorum != 2 || len(sub.Set.Roots) != 2 || sub.Ready != 1 || sub.Skipped != 0 {
		t.Errorf("submitted %+v", sub)
	}
	id := sub.Set.ID

	// The .drv closure is staged for the workers.
	rc, _, err := qc.OpenStaged(ctx, farm.ClosureKey(up.DefaultBuilderID, id))
	if err != nil {
		t.Fatalf("staged closure: %v", err)
	}
	drvs := 0
	if err := nix.ReadExportDerivations(rc, nix.ExportDrvLimits{}, func(string, []byte) error { drvs++; return nil }); err != nil || drvs != 4 {
		t.Errorf("staged closure: %d derivations, %v; want 4", drvs, err)
	}
	rc.Close()

	// No scheduler runs: everything waits.
	stdout, stderr, code = cli(t, ctx, append([]string{"farm", "status", id}, conn...)...)
	if code != exitRunning || !strings.Contains(stdout, "4 derivations: 0 done (0 skipped), 0 building, 4 waiting") {
		t.Errorf("farm status: exit %d\n%s\n%s", code, stdout, stderr)
	}
	stdout, _, _ = cli(t, ctx, append([]string{"farm", "status", "--json", id}, conn...)...)
	var st struct {
		Counts      map[string]int
		Derivations []struct{ DrvPath string }
	}
	if err := json.Unmarshal([]byte(stdout), &st); err != nil || st.Counts["waiting"] != 4 || st.Counts["done"] != 0 || len(st.Derivations) != 4 {
		t.Errorf("farm status --json: %v\n%s", err, stdout)
	}

	// A mass rebuild: what depends on a.
	a := ""
	for _, d := range st.Derivations {
		if strings.HasSuffix(d.DrvPath, "-farm-cli-a.drv") {
			a = d.DrvPath
		}
	}
	stdout, stderr, code = cli(t, ctx, append([]string{"submit", nixFile, "-A", "top", "-A", "other", "--argstr", "tag", uniqueMessage(t),
		"--cache", cacheURL, "--cache-key", keyFile, "--dependents-of", a, "--json"}, conn...)...)
	if code != exitUsageErr || !strings.Contains(stderr, "neither a derivation of the graph") {
		t.Errorf("--dependents-of a derivation of another graph (another tag): exit %d\n%s\n%s", code, stdout, stderr)
	}
	stdout, stderr, code = cli(t, ctx, append([]string{"submit", nixFile, "-A", "top", "-A", "other", "--argstr", "tag", tag,
		"--cache", cacheURL, "--cache-key", keyFile, "--dependents-of", a, "--json"}, conn...)...)
	var mass struct{ Set struct{ Roots []string } }
	if err := json.Unmarshal([]byte(stdout), &mass); code != 0 || err != nil {
		t.Fatalf("submit --dependents-of: exit %d, %v\n%s\n%s", code, err, stdout, stderr)
	}
	var roots []string
	for _, r := range mass.Set.Roots {
		roots = append(roots, r[strings.Index(r, "-farm-cli-")+1:])
	}
	slices.Sort(roots)
	if !slices.Equal(roots, []string{"farm-cli-b.drv", "farm-cli-other.drv", "farm-cli-top.drv"}) {
		t.Errorf("mass rebuild roots %v", roots)
	}

	if stdout, stderr, code := cli(t, ctx, append([]string{"farm", "cancel", id}, conn...)...); code != 0 || !strings.Contains(stdout, "cancelled") {
		t.Errorf("farm cancel: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if stdout, _, _ := cli(t, ctx, append([]string{"farm", "status", id}, conn...)...); !strings.Contains(stdout, "cancelled") {
		t.Errorf("status after cancel:\n%s", stdout)
	}
	// Nothing was built: the leaderboard is empty.
	if stdout, stderr, code := cli(t, ctx, append([]string{"farm", "stats"}, conn...)...); code != 0 || strings.Count(stdout, "(no builds)") != 2 {
		t.Errorf("farm stats: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if _, stderr, code := cli(t, ctx, append([]string{"farm", "status", "aaaaaaaaaaaaaaaaaaaaaaaaaa"}, conn...)...); code == 0 || !strings.Contains(stderr, "not found") {
		t.Errorf("unknown set: exit %d\n%s", code, stderr)
	}
}

// TestFarmSchedulerCommand runs 'farm scheduler' and sees it dispatch a
// submitted set's first derivation.
func TestFarmSchedulerCommand(t *testing.T) {
	ctx := testctx.New(t, 2*time.Minute)
	dir := t.TempDir()
	natsURL, _ := farmNATS(t)
	cacheURL, keyFile := emptyCache(t, dir)
	conn := []string{"--nats-url", natsURL, "--data-dir", dir}
	sctx, stop := context.WithCancel(ctx)
	done := make(chan int, 1)
	var schedErr testlog.Buffer
	go func() {
		var out testlog.Buffer
		done <- run(sctx, append([]string{"farm", "scheduler", "--cache", cacheURL, "--cache-key", keyFile}, conn...), strings.NewReader(""), &out, &schedErr)
	}()
	out, err := exec.Command("nix-instantiate", "--expr", `derivation { name = "farm-sched-`+uniqueMessage(t)+`"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; }`).Output()
	if err != nil {
		t.Fatal(err)
	}
	drv := strings.TrimSpace(string(out))
	stdout, stderr, code := cli(t, ctx, append([]string{"submit", "--no-closure", drv, "--cache", cacheURL, "--cache-key", keyFile}, conn...)...)
	if code != 0 {
		t.Fatalf("submit: exit %d\n%s", code, stderr)
	}
	id := strings.TrimSpace(stdout)
	deadline := time.Now().Add(30 * time.Second)
	for {
		stdout, _, _ := cli(t, ctx, append([]string{"farm", "status", id}, conn...)...)
		if strings.Contains(stdout, "1 building") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not dispatched:\n%s\nscheduler:\n%s", stdout, schedErr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	if code := <-done; code != 0 {
		t.Errorf("scheduler exit %d\n%s", code, schedErr.String())
	}
}

// farmNATS is an embedded NATS server with the streams a running pusher
// and farm scheduler make; it returns its URL and a connection.
func farmNATS(t *testing.T) (string, *queue.Conn) {
	t.Helper()
	srv, qc := testqueue.Embedded(t, natsserver.Config{})
	// The farm's stream and bucket, as 'provenix up' makes them.
	if err := qc.EnsureFarm(testctx.New(t, time.Minute), queue.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	return srv.ClientURL(), qc
}

// emptyCache is a binary cache that has nothing, and a file holding a
// public key for it.
func emptyCache(t *testing.T, dir string) (string, string) {
	t.Helper()
	cache := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(cache.Close)
	_, pub, err := signature.GenerateKeypair("farm-test-1", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "cache.pub")
	if err := os.WriteFile(keyFile, []byte(pub.String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return cache.URL, keyFile
}
