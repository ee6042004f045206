package farm

import (
	"context"
	"errors"
	"slices"
	"testing"
)

type fakeInstantiator map[string][]string

func (f fakeInstantiator) Instantiate(_ context.Context, file, attr string, args, argstrs map[string]string) ([]string, error) {
	if args["x"] != "1" || argstrs["y"] != "two" {
		return nil, errors.New("arguments not passed")
	}
	return f[file+"#"+attr], nil
}

func TestRoots(t *testing.T) {
	nx := fakeInstantiator{"f.nix#a": {fakePath("a.drv")}, "f.nix#b": {fakePath("b.drv"), fakePath("c.drv")}}
	o := RootsOptions{Attrs: []string{"a", "b"}, Args: map[string]string{"x": "1"}, ArgStrs: map[string]string{"y": "two"}}
	got, err := Roots(context.Background(), nx, []string{"f.nix"}, o)
	if err != nil || !slices.Equal(got, []string{fakePath("a.drv"), fakePath("b.drv"), fakePath("c.drv")}) {
		t.Errorf("attributes: %v, %v", got, err)
	}
	drvs := []string{fakePath("a.drv"), fakePath("b.drv")}
	if got, err := Roots(context.Background(), nx, drvs, RootsOptions{}); err != nil || !slices.Equal(got, drvs) {
		t.Errorf(".drv targets: %v, %v", got, err)
	}
	for _, bad := range [][]string{{"f.nix"}, {fakePath("a")}, {"relative.drv"}} {
		if _, err := Roots(context.Background(), nx, bad, RootsOptions{}); !errors.Is(err, ErrInvalid) {
			t.Errorf("%v without attributes: %v", bad, err)
		}
	}
	if _, err := Roots(context.Background(), nx, []string{"f.nix", "g.nix"}, o); !errors.Is(err, ErrInvalid) {
		t.Errorf("two files with attributes: %v", err)
	}
}
