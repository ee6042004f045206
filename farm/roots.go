package farm

import (
	"context"
	"fmt"
	"strings"

	"codeberg.org/provenix/provenix/storepath"
)

// Instantiator evaluates attributes of a .nix file to .drv paths;
// *nix.Nix has it.
type Instantiator interface {
	Instantiate(ctx context.Context, file, attr string, args, argstrs map[string]string) ([]string, error)
}

// RootsOptions say what a submission names.
type RootsOptions struct {
	// Attrs are the attributes of the one file target; none means every
	// target is a .drv path.
	Attrs []string
	// Args and ArgStrs are passed to the file (--arg, --argstr).
	Args, ArgStrs map[string]string
}

// Roots returns the .drv paths targets name: each target as a .drv
// store path, or, with Attrs, the attributes of the one .nix file
// target, instantiated with nx. A target of the wrong shape fails with
// ErrInvalid.
func Roots(ctx context.Context, nx Instantiator, targets []string, o RootsOptions) ([]string, error) {
	if len(o.Attrs) == 0 {
		for _, t := range targets {
			if storepath.Check(t) != nil || !strings.HasSuffix(t, ".drv") {
				return nil, fmt.Errorf("%w: %s: want a .drv store path, or FILE.nix with -A ATTR", ErrInvalid, t)
			}
		}
		return targets, nil
	}
	if len(targets) != 1 {
		return nil, fmt.Errorf("%w: attributes take one .nix file, got %d targets", ErrInvalid, len(targets))
	}
	var roots []string
	for _, a := range o.Attrs {
		drvs, err := nx.Instantiate(ctx, targets[0], a, o.Args, o.ArgStrs)
		if err != nil {
			return nil, fmt.Errorf("farm: %s -A %s: %w", targets[0], a, err)
		}
		roots = append(roots, drvs...)
	}
	return roots, nil
}
