package farm

import (
	"context"
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/derivation"
)

func TestGraphOrderAndDependents(t *testing.T) {
	// a ← b, a ← c, (b, c) ← d; e alone.
	g := graphOf(t, spec{"a": nil, "b": {"a"}, "c": {"a"}, "d": {"b", "c"}, "e": nil}, "x86_64-linux")
	pos := map[string]int{}
	for i, p := range g.Order() {
		pos[nameOf(p)] = i
	}
	for _, e := range [][2]string{{"a", "b"}, {"a", "c"}, {"b", "d"}, {"c", "d"}} {
		if pos[e[0]] >= pos[e[1]] {
			t.Errorf("%s ordered after its dependent %s: %v", e[0], e[1], pos)
		}
	}
	names := func(ps []string) []string {
		var out []string
		for _, p := range ps {
			out = append(out, nameOf(p))
		}
		slices.Sort(out)
		return out
	}
	if got := names(g.Dependents(fakePath("a.drv"))); !slices.Equal(got, []string{"b", "c"}) {
		t.Errorf("Dependents(a) = %v", got)
	}
	if got := names(g.Downstream(fakePath("a.drv"))); !slices.Equal(got, []string{"b", "c", "d"}) {
		t.Errorf("Downstream(a) = %v", got)
	}
	if got := names(g.Closure(fakePath("d.drv"))); !slices.Equal(got, []string{"a", "b", "c", "d"}) {
		t.Errorf("Closure(d) = %v", got)
	}
	if got := g.Needs(fakePath("d.drv")); !slices.Equal(got, slices.Sorted(slices.Values([]string{fakePath("b"), fakePath("c")}))) {
		t.Errorf("Needs(d) = %v", got)
	}
	vis := map[string]bool{fakePath("b"): true}
	if g.Ready(fakePath("d.drv"), func(p string) bool { return vis[p] }) {
		t.Error("d ready with c missing")
	}
	vis[fakePath("c")] = true
	if !g.Ready(fakePath("d.drv"), func(p string) bool { return vis[p] }) {
		t.Error("d not ready with b and c visible")
	}
	if !g.Ready(fakePath("a.drv"), func(string) bool { return false }) {
		t.Error("a leaf is not ready")
	}
}

func TestGraphRefusesCyclesAndOpenGraphs(t *testing.T) {
	a := &Node{DrvPath: fakePath("a.drv"), System: "s", Outputs: map[string]string{"out": fakePath("a")}, Inputs: map[string][]string{fakePath("b.drv"): {"out"}}}
	b := &Node{DrvPath: fakePath("b.drv"), System: "s", Outputs: map[string]string{"out": fakePath("b")}, Inputs: map[string][]string{fakePath("a.drv"): {"out"}}}
	if _, err := NewGraph([]*Node{a, b}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("cycle: %v", err)
	}
	if _, err := NewGraph([]*Node{a}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "not in the graph") {
		t.Errorf("open graph: %v", err)
	}
	c := &Node{DrvPath: fakePath("c.drv"), System: "s", Outputs: map[string]string{"out": fakePath("c")}, Inputs: map[string][]string{fakePath("d.drv"): {"dev"}}}
	d := &Node{DrvPath: fakePath("d.drv"), System: "s", Outputs: map[string]string{"out": fakePath("d")}}
	if _, err := NewGraph([]*Node{c, d}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `no output "dev"`) {
		t.Errorf("missing input output: %v", err)
	}
}

func TestNodeOfFeatures(t *testing.T) {
	d := &derivation.Derivation{Platform: "x86_64-linux", Outputs: map[string]*derivation.Output{"out": {Path: fakePath("x")}},
		Env: map[string]string{"requiredSystemFeatures": " kvm  big-parallel kvm"}}
	n, err := NodeOf(fakePath("x.drv"), d)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(n.Features, []string{"big-parallel", "kvm"}) {
		t.Errorf("env features: %v", n.Features)
	}
	d.Env = map[string]string{"__json": `{"requiredSystemFeatures":["nixos-test"],"name":"x"}`}
	if n, err = NodeOf(fakePath("x.drv"), d); err != nil || !slices.Equal(n.Features, []string{"nixos-test"}) {
		t.Errorf("structured attrs features: %v, %v", n, err)
	}
	d.Outputs["out"].Path = ""
	if _, err := NodeOf(fakePath("x.drv"), d); !errors.Is(err, ErrInvalid) {
		t.Errorf("floating CA output accepted: %v", err)
	}
}

// TestReadGraphFromStore reads real .drv files nix-instantiate wrote.
func TestReadGraphFromStore(t *testing.T) {
	expr := `let
  mk = name: deps: feats: derivation ({ inherit name; system = "x86_64-linux"; builder = "/bin/sh";
    args = [ "-c" "echo ${name} ${toString deps} > $out" ]; } // (if feats == [] then {} else { requiredSystemFeatures = feats; }));
  a = mk "farm-graph-a" [] [];
  b = mk "farm-graph-b" [ a ] [ "kvm" ];
  c = mk "farm-graph-c" [ a ] [];
in mk "farm-graph-d" [ b c ] []`
	out, err := exec.Command("nix-instantiate", "--expr", expr).Output()
	if err != nil {
		t.Fatalf("nix-instantiate: %v", err)
	}
	root := strings.TrimSpace(string(out))
	g, err := ReadGraph(context.Background(), []string{root}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if g.Len() != 4 {
		t.Fatalf("%d derivations, want 4", g.Len())
	}
	order := g.Order()
	if order[len(order)-1] != root {
		t.Errorf("root %s not last in %v", root, order)
	}
	var b *Node
	for _, n := range g.Nodes() {
		if strings.HasSuffix(n.DrvPath, "-farm-graph-b.drv") {
			b = n
		}
	}
	if b == nil || !slices.Equal(b.Features, []string{"kvm"}) || b.System != "x86_64-linux" || len(b.Inputs) != 1 {
		t.Errorf("b = %+v", b)
	}
	if len(g.Needs(root)) != 2 {
		t.Errorf("root needs %v", g.Needs(root))
	}
	// A .drv whose contents are not what its path names is refused.
	lie := func(p string) ([]byte, error) {
		if p == root {
			return exec.Command("cat", b.DrvPath).Output()
		}
		return exec.Command("cat", p).Output()
	}
	if _, err := ReadGraph(context.Background(), []string{root}, lie); !errors.Is(err, ErrInvalid) {
		t.Errorf("lying .drv: %v", err)
	}
}

func TestDependentsOfAndSub(t *testing.T) {
	// lib ← (app1, app2 ← app3); tool alone; app2 also needs other.
	g := graphOf(t, spec{"lib": nil, "other": nil, "tool": nil, "app1": {"lib"}, "app2": {"lib", "other"}, "app3": {"app2"}}, "x86_64-linux")
	names := func(ps []string) []string {
		var out []string
		for _, p := range ps {
			out = append(out, nameOf(p))
		}
		slices.Sort(out)
		return out
	}
	for _, target := range []string{fakePath("lib.drv"), fakePath("lib")} {
		deps, err := g.DependentsOf(target)
		if err != nil {
			t.Fatal(err)
		}
		if got := names(deps); !slices.Equal(got, []string{"app1", "app2", "app3"}) {
			t.Errorf("DependentsOf(%s) = %v", target, got)
		}
		sub, err := g.Sub(deps)
		if err != nil {
			t.Fatal(err)
		}
		if got := names(sub.Order()); !slices.Equal(got, []string{"app1", "app2", "app3", "lib", "other"}) {
			t.Errorf("Sub = %v (the dependents and their closures, not tool)", got)
		}
	}
	if deps, err := g.DependentsOf(fakePath("app3.drv")); err != nil || len(deps) != 0 {
		t.Errorf("DependentsOf(top) = %v, %v", deps, err)
	}
	if _, err := g.DependentsOf(fakePath("elsewhere")); !errors.Is(err, ErrInvalid) {
		t.Errorf("unknown target: %v", err)
	}
}
