package nix

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// FuzzFilterExport feeds arbitrary export streams through the checked
// import path (the NAR reader included): it must return an error or a
// clean result, never panic or run away, and never pass a stream whose
// records fail their content-address check.
func FuzzFilterExport(f *testing.F) {
	addExportSeeds(f)
	f.Add(bytes.Repeat([]byte{1, 0, 0, 0, 0, 0, 0, 0}, 8))
	spoolDir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		spool, err := os.CreateTemp(spoolDir, "spool")
		if err != nil {
			t.Fatal(err)
		}
		defer os.Remove(spool.Name())
		defer spool.Close()
		var out bytes.Buffer
		err = filterExport(bytes.NewReader(data), &out, spool, func(string) (bool, error) { return false, nil })
		if err != nil && !errors.Is(err, ErrBadExport) && !errors.Is(err, io.ErrUnexpectedEOF) {
			// Every refusal of the stream's content must be matchable.
			if !bytes.Contains([]byte(err.Error()), []byte("export")) {
				t.Fatalf("unexpected error kind: %v", err)
			}
		}
		if err == nil && out.Len() == 0 {
			t.Fatal("accepted a stream and wrote nothing, not even the end marker")
		}
	})
}

// FuzzReadExportDerivations: the pusher's reader of staged closures gets
// streams anyone with staging rights wrote. It must fail or succeed
// cleanly, hand fn only .drv files that pass their content-address
// check, and keep within its limits.
func FuzzReadExportDerivations(f *testing.F) {
	addExportSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		lim := ExportDrvLimits{MaxDrvSize: 4096, MaxDrvs: 8, MaxTotal: 8192}
		var total int
		err := ReadExportDerivations(bytes.NewReader(data), lim, func(p string, b []byte) error {
			if len(b) > lim.MaxDrvSize {
				t.Fatalf("%s: %d bytes kept", p, len(b))
			}
			total += len(b)
			return nil
		})
		if total > int(lim.MaxTotal) {
			t.Fatalf("%d bytes kept in all", total)
		}
		if err != nil && !errors.Is(err, ErrBadExport) && !errors.Is(err, ErrExportLimit) && !bytes.Contains([]byte(err.Error()), []byte("export")) {
			t.Fatalf("unexpected error kind: %v", err)
		}
	})
}

// addExportSeeds seeds f with a real export stream (testdata), its first
// half and an empty stream.
func addExportSeeds(f *testing.F) {
	seed, err := os.ReadFile(filepath.Join("testdata", "seed.export"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add(seed[:len(seed)/2])
	f.Add([]byte{})
}
