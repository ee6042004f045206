// Package testdrv makes real derivations without Nix: tests that publish
// made-up results to a pusher that checks output paths (drvpath) need a
// .drv whose output is the path they claim, and its closure export.
package testdrv

import (
	"bytes"

	"github.com/nix-community/go-nix/pkg/derivation"
	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/wire"
)

// Drv is one derivation without inputs.
type Drv struct {
	// Path is the .drv's store path, Out its output "out".
	Path, Out string
	// Export is a nix-store --export stream of the .drv (its closure).
	Export []byte
}

// New returns the derivation called name for system; the same
// arguments give the same paths.
func New(name, system string) (*Drv, error) {
	d := &derivation.Derivation{
		Outputs:          map[string]*derivation.Output{"out": {}},
		InputDerivations: map[string][]string{},
		Platform:         system,
		Builder:          "/bin/sh",
		Arguments:        []string{"-c", "echo " + name + " > $out"},
		Env:              map[string]string{"name": name, "system": system, "builder": "/bin/sh", "out": ""},
	}
	outs, err := d.CalculateOutputPaths(nil)
	if err != nil {
		return nil, err
	}
	d.Outputs["out"].Path = outs["out"]
	d.Env["out"] = outs["out"]
	p, err := d.DrvPath()
	if err != nil {
		return nil, err
	}
	var text bytes.Buffer
	if err := d.WriteDerivation(&text); err != nil {
		return nil, err
	}
	var ex bytes.Buffer
	wire.WriteUint64(&ex, 1)
	w, err := nar.NewWriter(&ex)
	if err != nil {
		return nil, err
	}
	if err := w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(text.Len())}); err != nil {
		return nil, err
	}
	if _, err := w.Write(text.Bytes()); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	wire.WriteUint64(&ex, 0x4558494e) // "NIXE"
	wire.WriteString(&ex, p)
	wire.WriteUint64(&ex, 0)  // references
	wire.WriteString(&ex, "") // deriver
	wire.WriteUint64(&ex, 0)  // no signature
	wire.WriteUint64(&ex, 0)  // end of stream
	return &Drv{Path: p, Out: outs["out"], Export: ex.Bytes()}, nil
}
