package builder

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/internal/testnix"
	"codeberg.org/provenix/provenix/internal/testqueue"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/queue"
	natsserver "codeberg.org/provenix/provenix/queue/server"
)

// startQueue runs an embedded NATS server with the streams in place.
func startQueue(t testing.TB) *queue.Conn {
	t.Helper()
	_, c := testqueue.Embedded(t, natsserver.Config{})
	return c
}

// pathInfoCA reads each path's ca straight from Nix 2.8's JSON, not
// through the package's parser.
func pathInfoCA(t *testing.T, ctx context.Context, n *nix.Nix, paths ...string) map[string]string {
	t.Helper()
	args := []string{"--store", n.Root, "--extra-experimental-features", "nix-command", "path-info", "--json"}
	out, err := exec.CommandContext(ctx, "nix", append(args, paths...)...).Output()
	if err != nil {
		t.Fatalf("nix path-info: %v", err)
	}
	var arr []struct{ Path, CA string }
	if err := json.Unmarshal(out, &arr); err != nil {
		t.Fatalf("nix path-info --json (this test reads Nix 2.8's array): %v", err)
	}
	m := map[string]string{}
	for _, a := range arr {
		m[a.Path] = a.CA
	}
	return m
}

// checkOrder asserts the results came dependencies first: every reference
// of an output or source is the path itself, or an output or source of
// this result or of an earlier one. Paths in outside (not attested here)
// are allowed anywhere.
func checkOrder(t *testing.T, results []*queue.Result, outside map[string]bool) {
	t.Helper()
	seen := map[string]bool{}
	for i, r := range results {
		mine := map[string]bool{}
		for _, o := range append(slices.Clone(r.Outputs), r.Sources...) {
			mine[o.Path] = true
		}
		for _, o := range append(slices.Clone(r.Sources), r.Outputs...) {
			for _, ref := range o.References {
				if ref != o.Path && !seen[ref] && !mine[ref] && !outside[ref] {
					t.Errorf("result %d (%s): %s refers to %s, published later or never", i, filepath.Base(r.DrvPath), o.Path, ref)
				}
			}
		}
		for p := range mine {
			if seen[p] {
				t.Errorf("result %d (%s): %s published twice", i, filepath.Base(r.DrvPath), p)
			}
			seen[p] = true
		}
	}
}

func closureTarget(bb, message string) Target {
	return Target{
		Installable: attest.Installable{Kind: "file", File: "../examples/closure.nix", Attr: "top"},
		Args:        map[string]string{"busybox": bb},
		ArgStrs:     map[string]string{"message": message},
	}
}

// TestBuildPublishesClosure builds examples/closure.nix in a fresh chroot
// store and publishes through an embedded NATS: six results (fixed,
// dep-a, multi-b with both outputs, left, right, top) in dependency order,
// the two sources (busybox by builtins.path, greeting.txt by toFile) with
// the content addresses Nix records, the fixed-output derivation's output
// with its own, and every output with its references.
func TestBuildPublishesClosure(t *testing.T) {
	bb := testnix.Busybox(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := startQueue(t)
	b := &Builder{
		Nix: &nix.Nix{Root: t.TempDir(), Options: offline()}, Queue: c, Signer: testSigner(t),
		BuilderID: "test-builder", Tenant: "t1",
	}
	pubs, err := b.Build(ctx, closureTarget(bb, t.Name()+time.Now().String()))
	if err != nil {
		t.Fatal(err)
	}
	results := testqueue.Results(t, c)
	if len(results) != 6 || len(pubs) != 6 {
		t.Fatalf("%d results, %d published; want 6", len(results), len(pubs))
	}
	checkOrder(t, results, nil)
	last := results[len(results)-1]
	if !strings.HasSuffix(last.DrvPath, "-closure-top.drv") || !pubs[5].Requested || pubs[0].Requested {
		t.Fatalf("top must come last and be the one requested: %s", last.DrvPath)
	}

	var all []string
	byName := map[string]queue.Output{}
	var sources []queue.Output
	for _, r := range results {
		for _, o := range r.Outputs {
			all = append(all, o.Path)
			byName[strings.SplitN(filepath.Base(o.Path), "-", 2)[1]] = o
			if len(o.References) == 0 && !strings.HasSuffix(o.Path, "-closure-fixed") {
				t.Errorf("%s: no references", o.Path)
			}
		}
		for _, s := range r.Sources {
			all = append(all, s.Path)
			sources = append(sources, s)
		}
	}
	if len(sources) != 2 {
		t.Fatalf("sources %+v, want busybox and greeting.txt", sources)
	}
	ca := pathInfoCA(t, ctx, b.Nix, all...)
	for _, s := range sources {
		if s.CA == "" || s.CA != ca[s.Path] || s.StagingKey != queue.ScopedKey(queue.StagingKey(s.NarHash), "test-builder") {
			t.Errorf("source %s: CA %q (Nix: %q), key %s", s.Path, s.CA, ca[s.Path], s.StagingKey)
		}
	}
	if !strings.HasPrefix(sources[0].CA, "fixed:r:sha256:") && !strings.HasPrefix(sources[1].CA, "fixed:r:sha256:") {
		t.Errorf("no recursive source among %+v", sources)
	}
	fixed := byName["closure-fixed"]
	if !strings.HasPrefix(fixed.CA, "fixed:sha256:") || fixed.CA != ca[fixed.Path] {
		t.Errorf("fixed-output: CA %q, Nix says %q", fixed.CA, ca[fixed.Path])
	}
	for name, o := range byName {
		if name != "closure-fixed" && o.CA != "" {
			t.Errorf("%s: input-addressed but CA %q", name, o.CA)
		}
	}
	if mb := byName["closure-multi-b-dev"]; !slices.Contains(mb.References, byName["closure-multi-b"].Path) {
		t.Errorf("multi-b.dev refers to multi-b.out: %v", mb.References)
	}
	// Every NAR is staged under its hash.
	for _, p := range all {
		var o queue.Output
		for _, x := range append(sources, fixed) {
			if x.Path == p {
				o = x
			}
		}
		if o.Path == "" {
			continue
		}
		rc, info, err := c.OpenStaged(ctx, o.StagingKey)
		if err != nil || info.Size != o.NarSize {
			t.Fatalf("staged %s: %v, %d bytes", p, err, info.Size)
		}
		rc.Close()
	}
}

// TestClosureLeavesOutWhatWasNotBuiltHere: dep-a imported from another
// store (not ultimate) is not attested, and busybox added beforehand with
// nix-store --add is still a source. Five results remain, in order.
func TestClosureLeavesOutWhatWasNotBuiltHere(t *testing.T) {
	bb := testnix.Busybox(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	message := t.Name() + time.Now().String()

	// Another store builds dep-a; this one imports it (and its busybox).
	other := &nix.Nix{Root: t.TempDir(), Options: offline()}
	drvs, err := other.Instantiate(ctx, "../examples/closure.nix", "dep-a", map[string]string{"busybox": bb}, map[string]string{"message": message})
	if err != nil {
		t.Fatal(err)
	}
	depA, err := other.Realise(ctx, drvs[0])
	if err != nil {
		t.Fatal(err)
	}
	var exp bytes.Buffer
	if err := other.Export(ctx, &exp, depA[0]); err != nil {
		t.Fatal(err)
	}

	n := &nix.Nix{Root: t.TempDir(), Options: offline()}
	dir := filepath.Join(t.TempDir(), "busybox")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, filepath.Base(bb)), src, 0o755); err != nil {
		t.Fatal(err)
	}
	nixStore := func(stdin []byte, args ...string) string {
		cmd := exec.CommandContext(ctx, "nix-store", append([]string{"--store", n.Root, "--option", "build-users-group", ""}, args...)...)
		cmd.Stdin = bytes.NewReader(stdin)
		out, err := cmd.Output()
		if err != nil {
			var ee *exec.ExitError
			errors.As(err, &ee)
			t.Fatalf("nix-store %v: %v\n%s", args, err, ee.Stderr)
		}
		return strings.TrimSpace(string(out))
	}
	added := nixStore(nil, "--add", dir)
	// Raw nix-store --import: nix.Import admits content-addressed paths only.
	nixStore(exp.Bytes(), "--import")
	if infos, err := n.PathInfos(ctx, depA[0], added); err != nil || infos[0].Ultimate || infos[1].Ultimate || infos[1].CA == "" {
		t.Fatalf("imported %+v, %v", infos, err)
	}

	c := startQueue(t)
	b := &Builder{Nix: n, Queue: c, Signer: testSigner(t), BuilderID: "test-builder", Tenant: "t1"}
	if _, err := b.Build(ctx, closureTarget(bb, message)); err != nil {
		t.Fatal(err)
	}
	results := testqueue.Results(t, c)
	if len(results) != 5 {
		t.Fatalf("%d results, want 5 (all but the imported dep-a)", len(results))
	}
	checkOrder(t, results, map[string]bool{depA[0]: true})
	var srcs []string
	for _, r := range results {
		for _, o := range r.Outputs {
			if o.Path == depA[0] {
				t.Errorf("the imported %s was attested", o.Path)
			}
		}
		for _, s := range r.Sources {
			srcs = append(srcs, s.Path)
		}
	}
	if !slices.Contains(srcs, added) || len(srcs) != 2 {
		t.Errorf("sources %v, want the added %s and greeting.txt", srcs, added)
	}
}

// TestProbeCancelledThenAttests: a caller cancelled while the builder
// learns its Nix (a runner job's request cut off) fails alone; the next
// caller, sharing the Builder, probes again and publishes.
func TestProbeCancelledThenAttests(t *testing.T) {
	bb := testnix.Busybox(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n := &nix.Nix{Root: t.TempDir(), Options: offline()}
	drvs, err := n.Instantiate(ctx, "../examples/hello.nix", "hello", map[string]string{"busybox": bb}, map[string]string{"message": t.Name() + time.Now().String()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Realise(ctx, drvs[0]); err != nil {
		t.Fatal(err)
	}
	q := &memQueue{}
	b := &Builder{Nix: n, Queue: q, Signer: testSigner(t), BuilderID: "test-builder", Tenant: "t1"}
	cut, cutNow := context.WithCancel(ctx)
	cutNow()
	if _, err := b.PublishClosure(cut, Target{Installable: attest.Installable{Kind: "drv", Ref: drvs[0]}}, drvs, ClosureOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled during the probe: %v", err)
	}
	pubs, err := b.PublishClosure(ctx, Target{Installable: attest.Installable{Kind: "drv", Ref: drvs[0]}}, drvs, ClosureOptions{Started: time.Now(), Finished: time.Now()})
	if err != nil || len(pubs) != 1 || len(q.results) != 1 {
		t.Fatalf("the next caller: %v, %d results", err, len(q.results))
	}
	if h := hex.EncodeToString(pubs[0].Outputs[0].NarHash[:]); q.results[0].Outputs[0].NarHash != h {
		t.Fatalf("published %s, want %s", q.results[0].Outputs[0].NarHash, h)
	}
}

// TestClosureEligible is the runner's rule: with Eligible accepting only
// what was registered since a job started, a dependency this store built
// before is left out of the closure, and a requested derivation built
// before is refused with ErrNotBuiltHere.
func TestClosureEligible(t *testing.T) {
	bb := testnix.Busybox(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	message := t.Name() + time.Now().String()
	n := &nix.Nix{Root: t.TempDir(), Options: offline()}
	inst := func(attr string) string {
		drvs, err := n.Instantiate(ctx, "../examples/closure.nix", attr, map[string]string{"busybox": bb}, map[string]string{"message": message})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := n.Realise(ctx, drvs[0]); err != nil {
			t.Fatal(err)
		}
		return drvs[0]
	}
	depA := inst("dep-a")
	// A fixed output fetched by an earlier job: not attested by this one,
	// but content-addressed, so it goes with the closure as a source.
	fixed := inst("fixed")
	// Nix keeps registration times to the second.
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second)))
	since := time.Now()
	top := inst("top")
	eligible := func(pi nix.PathInfo) bool { return !pi.Registered.Before(since.Truncate(time.Second)) }

	q := &memQueue{}
	b := &Builder{Nix: n, Queue: q, Signer: testSigner(t), BuilderID: "test-builder", Tenant: "t1"}
	tg := Target{Installable: attest.Installable{Kind: "drv", Ref: top}}
	pubs, err := b.PublishClosure(ctx, tg, []string{top}, ClosureOptions{Started: since, Finished: time.Now(), Eligible: eligible})
	if err != nil {
		t.Fatal(err)
	}
	var drvs, sources []string
	for _, r := range q.results {
		drvs = append(drvs, r.DrvPath)
		for _, s := range r.Sources {
			sources = append(sources, filepath.Base(s.Path))
		}
	}
	if len(pubs) != 4 || slices.Contains(drvs, depA) || slices.Contains(drvs, fixed) {
		t.Fatalf("published %v; want all but dep-a and fixed", drvs)
	}
	depAOut, err := n.ReadDerivation(depA)
	if err != nil {
		t.Fatal(err)
	}
	checkOrder(t, q.results, map[string]bool{depAOut.Outputs["out"].Path: true})
	slices.Sort(sources)
	if len(sources) != 3 || !strings.HasSuffix(sources[0], "-closure-fixed") {
		t.Errorf("sources %v: busybox (top refers to it), greeting.txt and the fixed output built before still go out", sources)
	}
	for _, r := range q.results {
		for _, s := range r.Sources {
			if strings.HasSuffix(s.Path, "-closure-fixed") && !strings.HasPrefix(s.CA, "fixed:sha256:") {
				t.Errorf("the fixed output goes without its CA: %+v", s)
			}
		}
	}
	_, err = b.PublishClosure(ctx, Target{Installable: attest.Installable{Kind: "drv", Ref: depA}}, []string{depA}, ClosureOptions{Eligible: eligible})
	if !errors.Is(err, ErrNotBuiltHere) {
		t.Fatalf("dep-a, built before: %v, want ErrNotBuiltHere", err)
	}
}
