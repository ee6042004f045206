package farm

import (
	"encoding/json"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"

	"github.com/nix-community/go-nix/pkg/derivation"

	"codeberg.org/provenix/provenix/storepath"
)

// Node is one derivation of a build graph: what scheduling needs of its
// .drv, nothing more.
type Node struct {
	DrvPath string `json:"drvPath"`
	System  string `json:"system"`
	// Features are the derivation's requiredSystemFeatures, sorted.
	Features []string `json:"features,omitempty"`
	// Outputs are the output paths by output name.
	Outputs map[string]string `json:"outputs"`
	// Inputs are the input derivations by .drv path, each with the names
	// of the outputs this derivation uses (a .drv's inputDrvs).
	Inputs map[string][]string `json:"inputs,omitempty"`
}

// NodeOf reads the scheduling facts of d, the derivation at drvPath. A
// floating content-addressed output (no path before the build) cannot be
// looked up in a cache before it is built and is refused.
func NodeOf(drvPath string, d *derivation.Derivation) (*Node, error) {
	if err := storepath.Check(drvPath); err != nil || !strings.HasSuffix(drvPath, ".drv") {
		return nil, fmt.Errorf("%w: %q is not a .drv store path", ErrInvalid, drvPath)
	}
	if d == nil || len(d.Outputs) == 0 {
		return nil, fmt.Errorf("%w: %s: no outputs", ErrInvalid, drvPath)
	}
	if d.Platform == "" {
		return nil, fmt.Errorf("%w: %s: no system", ErrInvalid, drvPath)
	}
	n := &Node{DrvPath: drvPath, System: d.Platform, Outputs: make(map[string]string, len(d.Outputs))}
	for name, o := range d.Outputs {
		if o == nil || o.Path == "" {
			return nil, fmt.Errorf("%w: %s: output %q has no path (floating content-addressed outputs are not supported)", ErrInvalid, drvPath, name)
		}
		if err := storepath.Check(o.Path); err != nil {
			return nil, fmt.Errorf("%w: %s: output %q: %w", ErrInvalid, drvPath, name, err)
		}
		n.Outputs[name] = o.Path
	}
	if len(d.InputDerivations) > 0 {
		n.Inputs = make(map[string][]string, len(d.InputDerivations))
		for p, outs := range d.InputDerivations {
			n.Inputs[p] = slices.Sorted(slices.Values(outs))
		}
	}
	feats, err := requiredFeatures(d.Env)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalid, drvPath, err)
	}
	n.Features = feats
	return n, nil
}

// requiredFeatures reads requiredSystemFeatures as Nix does: a
// space-separated env variable, or a list in structured attributes
// (__json).
func requiredFeatures(env map[string]string) ([]string, error) {
	var feats []string
	if js, ok := env["__json"]; ok {
		var attrs struct {
			RequiredSystemFeatures []string `json:"requiredSystemFeatures"`
		}
		if err := json.Unmarshal([]byte(js), &attrs); err != nil {
			return nil, fmt.Errorf("structured attributes: %w", err)
		}
		feats = attrs.RequiredSystemFeatures
	} else {
		feats = strings.Fields(env["requiredSystemFeatures"])
	}
	return normFeatures(feats), nil
}

// normFeatures sorts and deduplicates a feature list; nil when empty.
func normFeatures(f []string) []string {
	out := slices.Compact(slices.Sorted(slices.Values(f)))
	out = slices.DeleteFunc(out, func(s string) bool { return s == "" })
	if len(out) == 0 {
		return nil
	}
	return out
}

// Graph is a build graph: derivations and their dependencies, closed
// (every input derivation is in it) and acyclic. It does not change once
// made.
type Graph struct {
	nodes map[string]*Node
	// order lists the .drv paths inputs first.
	order []string
	// dependents[p] are the derivations with p among their inputs.
	dependents map[string][]string
}

// NewGraph checks nodes (closed, acyclic, each .drv once) and makes their
// graph.
func NewGraph(nodes []*Node) (*Graph, error) {
	g := &Graph{nodes: make(map[string]*Node, len(nodes)), dependents: map[string][]string{}}
	for _, n := range nodes {
		if n == nil {
			return nil, fmt.Errorf("%w: nil node", ErrInvalid)
		}
		if _, dup := g.nodes[n.DrvPath]; dup {
			return nil, fmt.Errorf("%w: %s given twice", ErrInvalid, n.DrvPath)
		}
		g.nodes[n.DrvPath] = n
	}
	for _, n := range nodes {
		for in, outs := range n.Inputs {
			dep, ok := g.nodes[in]
			if !ok {
				return nil, fmt.Errorf("%w: %s: input %s is not in the graph", ErrInvalid, n.DrvPath, in)
			}
			for _, o := range outs {
				if _, ok := dep.Outputs[o]; !ok {
					return nil, fmt.Errorf("%w: %s: input %s has no output %q", ErrInvalid, n.DrvPath, in, o)
				}
			}
			g.dependents[in] = append(g.dependents[in], n.DrvPath)
		}
	}
	for p := range g.dependents {
		slices.Sort(g.dependents[p])
	}
	order, err := topoOrder(g.nodes, g.dependents)
	if err != nil {
		return nil, err
	}
	g.order = order
	return g, nil
}

// topoOrder is Kahn's algorithm, inputs first, ties by .drv path so the
// order is the same on every run.
func topoOrder(nodes map[string]*Node, dependents map[string][]string) ([]string, error) {
	indeg := make(map[string]int, len(nodes))
	var ready []string
	for p, n := range nodes {
		indeg[p] = len(n.Inputs)
		if indeg[p] == 0 {
			ready = append(ready, p)
		}
	}
	slices.Sort(ready)
	order := make([]string, 0, len(nodes))
	for len(ready) > 0 {
		p := ready[0]
		ready = ready[1:]
		order = append(order, p)
		var next []string
		for _, d := range dependents[p] {
			indeg[d]--
			if indeg[d] == 0 {
				next = append(next, d)
			}
		}
		ready = append(ready, next...)
	}
	if len(order) != len(nodes) {
		var cyc []string
		for p, d := range indeg {
			if d > 0 {
				cyc = append(cyc, path.Base(p))
			}
		}
		slices.Sort(cyc)
		return nil, fmt.Errorf("%w: a dependency cycle among %s", ErrInvalid, strings.Join(cyc, ", "))
	}
	return order, nil
}

// Len is the number of derivations.
func (g *Graph) Len() int { return len(g.nodes) }

// Node returns the derivation at drvPath, or nil.
func (g *Graph) Node(drvPath string) *Node { return g.nodes[drvPath] }

// Order returns the .drv paths, every input before its dependents.
func (g *Graph) Order() []string { return slices.Clone(g.order) }

// Dependents returns the derivations that have drvPath as an input.
func (g *Graph) Dependents(drvPath string) []string { return slices.Clone(g.dependents[drvPath]) }

// Needs returns the store paths drvPath's inputs must have made visible
// before it can be built: the used outputs of its input derivations.
func (g *Graph) Needs(drvPath string) []string {
	n := g.nodes[drvPath]
	if n == nil {
		return nil
	}
	var out []string
	for in, outs := range n.Inputs {
		for _, o := range outs {
			out = append(out, g.nodes[in].Outputs[o])
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Ready reports, given the store paths known visible, whether drvPath
// can be built now: every path it needs is visible.
func (g *Graph) Ready(drvPath string, visible func(storePath string) bool) bool {
	for _, p := range g.Needs(drvPath) {
		if !visible(p) {
			return false
		}
	}
	return true
}

// Closure returns every derivation drvPath depends on, itself included,
// inputs first.
func (g *Graph) Closure(drvPath string) []string {
	seen := map[string]bool{}
	stack := []string{drvPath}
	for len(stack) > 0 {
		p := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[p] || g.nodes[p] == nil {
			continue
		}
		seen[p] = true
		stack = slices.AppendSeq(stack, maps.Keys(g.nodes[p].Inputs))
	}
	return slices.DeleteFunc(g.Order(), func(p string) bool { return !seen[p] })
}

// Downstream returns every derivation that depends on drvPath, directly
// or not, itself excluded, inputs first.
func (g *Graph) Downstream(drvPath string) []string {
	seen := map[string]bool{}
	stack := slices.Clone(g.dependents[drvPath])
	for len(stack) > 0 {
		p := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[p] {
			continue
		}
		seen[p] = true
		stack = append(stack, g.dependents[p]...)
	}
	return slices.DeleteFunc(g.Order(), func(p string) bool { return !seen[p] })
}

// Nodes returns the derivations, inputs first.
func (g *Graph) Nodes() []*Node {
	out := make([]*Node, len(g.order))
	for i, p := range g.order {
		out[i] = g.nodes[p]
	}
	return out
}

// DependentsOf returns the derivations of g whose closure contains
// target, a .drv path of g or an output path of one of its derivations,
// inputs first: what a mass rebuild after a change to target builds.
// target's own derivation is not among them.
func (g *Graph) DependentsOf(target string) ([]string, error) {
	drv := ""
	if g.nodes[target] != nil {
		drv = target
	} else {
		for _, p := range g.order {
			for _, o := range g.nodes[p].Outputs {
				if o == target {
					drv = p
				}
			}
		}
	}
	if drv == "" {
		return nil, fmt.Errorf("%w: %s is neither a derivation of the graph nor one of their outputs", ErrInvalid, target)
	}
	return g.Downstream(drv), nil
}

// Sub is the graph of the closures of roots.
func (g *Graph) Sub(roots []string) (*Graph, error) {
	keep := map[string]bool{}
	for _, r := range roots {
		if g.nodes[r] == nil {
			return nil, fmt.Errorf("%w: %s is not in the graph", ErrInvalid, r)
		}
		for _, p := range g.Closure(r) {
			keep[p] = true
		}
	}
	var nodes []*Node
	for _, p := range g.order {
		if keep[p] {
			nodes = append(nodes, g.nodes[p])
		}
	}
	return NewGraph(nodes)
}
