package farm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"

	"github.com/nix-community/go-nix/pkg/derivation"
)

// ReadFunc returns the contents of a .drv file; os.ReadFile reads the
// local store's.
type ReadFunc func(drvPath string) ([]byte, error)

// ReadGraph reads the .drv closure of roots with read (os.ReadFile when
// nil), parses each with go-nix's derivation parser, and makes its graph.
// It checks each .drv is the one its path names (derivation.DrvPath), so
// a graph read from someone else's files is what the paths say.
func ReadGraph(ctx context.Context, roots []string, read ReadFunc) (*Graph, error) {
	if read == nil {
		read = os.ReadFile
	}
	seen := map[string]bool{}
	var nodes []*Node
	stack := slices.Clone(roots)
	for len(stack) > 0 {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		p := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[p] {
			continue
		}
		seen[p] = true
		b, err := read(p)
		if err != nil {
			return nil, fmt.Errorf("farm: read %s: %w", p, err)
		}
		d, err := derivation.ReadDerivation(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("farm: %w: parse %s: %w", ErrInvalid, p, err)
		}
		if got, err := d.DrvPath(); err != nil || got != p {
			return nil, fmt.Errorf("farm: %w: %s holds the derivation of %s (%v)", ErrInvalid, p, got, err)
		}
		n, err := NodeOf(p, d)
		if err != nil {
			return nil, fmt.Errorf("farm: %w", err)
		}
		nodes = append(nodes, n)
		for in := range n.Inputs {
			if !seen[in] {
				stack = append(stack, in)
			}
		}
	}
	g, err := NewGraph(nodes)
	if err != nil {
		return nil, fmt.Errorf("farm: %w", err)
	}
	return g, nil
}
