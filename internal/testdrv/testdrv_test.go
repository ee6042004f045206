package testdrv_test

import (
	"bytes"
	"testing"

	"github.com/nix-community/go-nix/pkg/derivation"

	"codeberg.org/provenix/provenix/drvpath"
	"codeberg.org/provenix/provenix/internal/testdrv"
	"codeberg.org/provenix/provenix/nix"
)

// TestAccepted: what New makes passes the checks a pusher runs.
func TestAccepted(t *testing.T) {
	d, err := testdrv.New("synthetic", "x86_64-linux")
	if err != nil {
		t.Fatal(err)
	}
	drvs := map[string]*derivation.Derivation{}
	err = nix.ReadExportDerivations(bytes.NewReader(d.Export), nix.ExportDrvLimits{}, func(p string, b []byte) error {
		drv, err := derivation.ReadDerivation(bytes.NewReader(b))
		drvs[p] = drv
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	outs, err := drvpath.NewCalculator(0).OutputPaths(d.Path, drvs)
	if err != nil || outs["out"] != d.Out {
		t.Fatalf("%v %v, want %s", outs, err, d.Out)
	}
}
