package drvpath_test

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/derivation"

	"codeberg.org/provenix/provenix/drvpath"
	"codeberg.org/provenix/provenix/internal/testnix"
	"codeberg.org/provenix/provenix/nix"
)

// instantiate instantiates examples/closure.nix's top with the host Nix
// (no build) and returns its .drv and the .drv files of its closure.
func instantiate(t testing.TB) (string, []string) {
	t.Helper()
	bb := testnix.Busybox(t)
	root := testnix.ModuleRoot(t)
	msg := "drvpath-" + time.Now().Format("150405.000000000")
	out := run(t, "nix-instantiate", filepath.Join(root, "examples", "closure.nix"), "-A", "top",
		"--arg", "busybox", bb, "--argstr", "message", msg)
	top := strings.TrimSpace(out)
	var drvs []string
	for _, p := range strings.Fields(run(t, "nix-store", "--query", "--requisites", top)) {
		if strings.HasSuffix(p, ".drv") {
			drvs = append(drvs, p)
		}
	}
	return top, drvs
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "NIX_CONFIG=substituters =\nbuild-users-group =\nexperimental-features = nix-command")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, stderr.String())
	}
	return string(out)
}

func parse(t *testing.T, p string) *derivation.Derivation {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d, err := derivation.ReadDerivation(f)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// nixOutputs is what Nix says drv's outputs are.
func nixOutputs(t *testing.T, drv string) map[string]string {
	t.Helper()
	d := parse(t, drv)
	outs := map[string]string{}
	for _, p := range strings.Fields(run(t, "nix-store", "--query", "--outputs", drv)) {
		for name, o := range d.Outputs {
			if o.Path == p {
				outs[name] = p
			}
		}
	}
	if len(outs) != len(d.Outputs) {
		t.Fatalf("%s: nix-store names %v, the .drv %d outputs", drv, outs, len(d.Outputs))
	}
	return outs
}

// TestRealClosure computes every output path of the sample closure (a
// fixed-output derivation, a two-output one, a diamond) from its real
// .drv files and compares each with what Nix says.
func TestRealClosure(t *testing.T) {
	top, paths := instantiate(t)
	drvs := map[string]*derivation.Derivation{}
	for _, p := range paths {
		drvs[p] = parse(t, p)
	}
	if len(drvs) != 6 {
		t.Fatalf("closure has %d derivations, want 6: %v", len(drvs), paths)
	}
	c := drvpath.NewCalculator(0)
	var sawFixed, sawMulti bool
	for _, p := range paths {
		got, err := c.OutputPaths(p, drvs)
		if err != nil {
			t.Fatal(err)
		}
		want := nixOutputs(t, p)
		if len(got) != len(want) {
			t.Fatalf("%s: got %v, Nix %v", p, got, want)
		}
		for name, w := range want {
			if got[name] != w {
				t.Errorf("%s output %s: got %s, Nix %s", p, name, got[name], w)
			}
		}
		sawFixed = sawFixed || drvs[p].Outputs["out"].HashAlgorithm != ""
		sawMulti = sawMulti || len(drvs[p].Outputs) == 2
	}
	if !sawFixed || !sawMulti {
		t.Fatalf("closure lacks a fixed-output (%v) or multi-output (%v) derivation", sawFixed, sawMulti)
	}
	// Remembered: the top alone is enough now, even without its inputs.
	if _, err := c.OutputPaths(top, map[string]*derivation.Derivation{top: drvs[top]}); err != nil {
		t.Fatal(err)
	}
	if got, ok := c.Known(top); !ok || got["out"] != nixOutputs(t, top)["out"] {
		t.Fatalf("Known(top) = %v, %v", got, ok)
	}
}

// TestRealExport reads the .drv files from a real nix-store --export of
// the closure (sources and all), as the pusher does, and computes the
// top's output from them with a fresh Calculator.
func TestRealExport(t *testing.T) {
	top, _ := instantiate(t)
	reqs := strings.Fields(run(t, "nix-store", "--query", "--requisites", top))
	export := []byte(run(t, "nix-store", append([]string{"--export"}, reqs...)...))
	drvs := map[string]*derivation.Derivation{}
	var sources int
	err := nix.ReadExportDerivations(bytes.NewReader(export), nix.ExportDrvLimits{}, func(p string, b []byte) error {
		d, err := derivation.ReadDerivation(bytes.NewReader(b))
		drvs[p] = d
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	sources = len(reqs) - len(drvs)
	if len(drvs) != 6 || sources < 2 {
		t.Fatalf("export read %d derivations of %d paths", len(drvs), len(reqs))
	}
	got, err := drvpath.NewCalculator(0).OutputPaths(top, drvs)
	if err != nil {
		t.Fatal(err)
	}
	if want := nixOutputs(t, top)["out"]; got["out"] != want {
		t.Fatalf("top: got %s, Nix %s", got["out"], want)
	}

	// A .drv larger than the limit is refused, not held.
	err = nix.ReadExportDerivations(bytes.NewReader(export), nix.ExportDrvLimits{MaxDrvSize: 64}, func(string, []byte) error { return nil })
	if !errors.Is(err, nix.ErrExportLimit) {
		t.Fatalf("64-byte limit: %v", err)
	}
	// A .drv altered in the stream no longer matches its path.
	var name string
	for p, d := range drvs {
		if d.Env["name"] == "closure-left" {
			name = p
		}
	}
	i := bytes.Index(export, []byte("closure-left\""))
	if i < 0 || name == "" {
		t.Fatal("no closure-left in the export")
	}
	bad := bytes.Clone(export)
	copy(bad[i:], "closure-lefT")
	err = nix.ReadExportDerivations(bytes.NewReader(bad), nix.ExportDrvLimits{}, func(string, []byte) error { return nil })
	if !errors.Is(err, nix.ErrBadExport) {
		t.Fatalf("altered .drv: %v", err)
	}
}

// TestRefusesForgeries: a derivation that is not what its path says, one
// whose inputs are missing, and one stating someone else's output path.
func TestRefusesForgeries(t *testing.T) {
	top, paths := instantiate(t)
	drvs := map[string]*derivation.Derivation{}
	for _, p := range paths {
		drvs[p] = parse(t, p)
	}
	// Missing an input.
	partial := map[string]*derivation.Derivation{top: drvs[top]}
	if _, err := drvpath.NewCalculator(0).OutputPaths(top, partial); !errors.Is(err, drvpath.ErrMissing) {
		t.Fatalf("missing inputs: %v", err)
	}
	// An input derivation altered under its path: its replacement would
	// change the top's outputs, so it must be refused instead.
	forged := map[string]*derivation.Derivation{}
	for p, d := range drvs {
		forged[p] = d
	}
	var left string
	for p, d := range drvs {
		if d.Env["name"] == "closure-left" {
			left = p
		}
	}
	l := parse(t, left)
	l.Env["message"] = "evil"
	forged[left] = l
	if _, err := drvpath.NewCalculator(0).OutputPaths(top, forged); !errors.Is(err, drvpath.ErrInvalid) {
		t.Fatalf("altered input: %v", err)
	}
	// The top stating another output path: the .drv's path changes too,
	// so it is not the derivation named.
	tp := parse(t, top)
	o := tp.Outputs["out"]
	o.Path = "/nix/store/" + strings.Repeat("0", 32) + "-closure-top"
	tp.Outputs["out"] = o
	tp.Env["out"] = o.Path
	forged[left] = drvs[left]
	forged[top] = tp
	if _, err := drvpath.NewCalculator(0).OutputPaths(top, forged); !errors.Is(err, drvpath.ErrInvalid) {
		t.Fatalf("other output path: %v", err)
	}
	self, err := tp.DrvPath()
	if err != nil {
		t.Fatal(err)
	}
	forged[self] = tp
	if _, err := drvpath.NewCalculator(0).OutputPaths(self, forged); !errors.Is(err, drvpath.ErrInvalid) {
		t.Fatalf("self-consistent path but wrong output: %v", err)
	}
}

// TestCacheBounded: a small cache still computes, forgetting the oldest.
func TestCacheBounded(t *testing.T) {
	top, paths := instantiate(t)
	drvs := map[string]*derivation.Derivation{}
	for _, p := range paths {
		drvs[p] = parse(t, p)
	}
	c := drvpath.NewCalculator(2)
	if _, err := c.OutputPaths(top, drvs); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range paths {
		if !c.Needs(p) {
			n++
		}
	}
	if n != 2 || c.Needs(top) {
		t.Fatalf("remembered %d (top: %v), want 2 with the top", n, !c.Needs(top))
	}
}

// BenchmarkCheckClosure is the pusher's work for a derivation it has not
// seen: read the .drv files out of the sample closure's export (busybox
// and all) and compute the top's outputs with an empty cache.
func BenchmarkCheckClosure(b *testing.B) {
	top, _ := instantiate(b)
	reqs := strings.Fields(run(b, "nix-store", "--query", "--requisites", top))
	export := []byte(run(b, "nix-store", append([]string{"--export"}, reqs...)...))
	b.SetBytes(int64(len(export)))
	b.ResetTimer()
	for b.Loop() {
		drvs := map[string]*derivation.Derivation{}
		err := nix.ReadExportDerivations(bytes.NewReader(export), nix.ExportDrvLimits{}, func(p string, c []byte) error {
			d, err := derivation.ReadDerivation(bytes.NewReader(c))
			drvs[p] = d
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := drvpath.NewCalculator(0).OutputPaths(top, drvs); err != nil {
			b.Fatal(err)
		}
	}
}
