package nix

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestExportStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nix-instantiate", "--expr",
		`derivation { name = "export-stream-`+strings.ReplaceAll(t.Name(), "/", "-")+`"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; }`).Output()
	if err != nil {
		t.Fatalf("nix-instantiate: %v", err)
	}
	drv := strings.TrimSpace(string(out))
	n := &Nix{}

	// The whole stream reaches the consumer, and is the export.
	var want, got bytes.Buffer
	if err := n.Export(ctx, &want, drv); err != nil {
		t.Fatal(err)
	}
	if err := n.ExportStream(ctx, func(r io.Reader) error { _, err := io.Copy(&got, r); return err }, drv); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), want.Bytes()) || got.Len() == 0 {
		t.Errorf("streamed %d bytes, export is %d", got.Len(), want.Len())
	}

	// A consumer that stops early: its error, and the export ends.
	stop := errors.New("enough")
	if err := n.ExportStream(ctx, func(r io.Reader) error { r.Read(make([]byte, 8)); return stop }, drv); !errors.Is(err, stop) {
		t.Errorf("early stop: %v", err)
	}
	// A consumer that stops early without error: nil (the export it
	// ended is not an error).
	if err := n.ExportStream(ctx, func(r io.Reader) error { r.Read(make([]byte, 8)); return nil }, drv); err != nil {
		t.Errorf("early stop without error: %v", err)
	}

	// An export that fails reaches the consumer as a read error.
	var readErr error
	err = n.ExportStream(ctx, func(r io.Reader) error { _, readErr = io.Copy(io.Discard, r); return readErr },
		"/nix/store/00000000000000000000000000000000-missing")
	if err == nil || readErr == nil {
		t.Errorf("failed export: %v, consumer saw %v", err, readErr)
	}
}
