package nix

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/wire"

	"codeberg.org/provenix/provenix/contentaddr"
	"codeberg.org/provenix/provenix/internal/testnix"
	"codeberg.org/provenix/provenix/storepath"
)

// narFile is the NAR of a single regular file.
func narFile(contents string, executable bool) []byte {
	var b bytes.Buffer
	for _, s := range []string{"nix-archive-1", "(", "type", "regular"} {
		wire.WriteString(&b, s)
	}
	if executable {
		wire.WriteString(&b, "executable")
		wire.WriteString(&b, "")
	}
	wire.WriteString(&b, "contents")
	wire.WriteString(&b, contents)
	wire.WriteString(&b, ")")
	return b.Bytes()
}

// narDir is the NAR of a directory of regular files, in the order given.
func narDir(names ...string) []byte {
	var b bytes.Buffer
	for _, s := range []string{"nix-archive-1", "(", "type", "directory"} {
		wire.WriteString(&b, s)
	}
	for _, n := range names {
		for _, s := range []string{"entry", "(", "name", n, "node", "(", "type", "regular", "contents", "x", ")", ")"} {
			wire.WriteString(&b, s)
		}
	}
	wire.WriteString(&b, ")")
	return b.Bytes()
}

// record is one export record around nar.
func record(nar []byte, path string, refs ...string) []byte {
	var b bytes.Buffer
	wire.WriteUint64(&b, 1)
	b.Write(nar)
	wire.WriteUint64(&b, exportMagic)
	wire.WriteString(&b, path)
	wire.WriteUint64(&b, uint64(len(refs)))
	for _, r := range refs {
		wire.WriteString(&b, r)
	}
	wire.WriteString(&b, "/nix/store/00000000000000000000000000000000-claimed-deriver.drv")
	wire.WriteUint64(&b, 0)
	return b.Bytes()
}

func stream(records ...[]byte) []byte {
	var b bytes.Buffer
	for _, r := range records {
		b.Write(r)
	}
	wire.WriteUint64(&b, 0)
	return b.Bytes()
}

func textPath(contents, name string, refs ...string) string {
	p, err := contentaddr.CA{Method: contentaddr.Text, Hash: sha256.Sum256([]byte(contents))}.StorePath(storepath.Dir, name, refs, false)
	if err != nil {
		panic(err)
	}
	return p
}

// TestFilterExport checks the stream format and the content-address gate
// without Nix; TestExportImport checks the addresses against real Nix.
func TestFilterExport(t *testing.T) {
	const dep = "/nix/store/00000000000000000000000000000000-dep"
	text := textPath("hello", "a.txt")
	textRef := textPath("uses "+dep, "b.txt", dep)
	good := stream(record(narFile("hello", false), text), record(narFile("uses "+dep, false), textRef, dep))
	mine := "/nix/store/11111111111111111111111111111111-built-here"
	tests := []struct {
		name    string
		in      []byte
		wantErr error
		want    []string // paths written through
	}{
		{"two text files", good, nil, []string{text, textRef}},
		{"empty export", stream(), nil, nil},
		{"no input", nil, ErrBadExport, nil},
		{"truncated in a NAR", good[:60], ErrBadExport, nil},
		{"truncated in the second record", good[:len(good)-20], ErrBadExport, nil},
		{"no end marker", good[:len(good)-8], ErrBadExport, nil},
		{"trailing data", append(slices.Clone(good), 0), ErrBadExport, nil},
		{"bad marker", append([]byte{2, 0, 0, 0, 0, 0, 0, 0}, good[8:]...), ErrBadExport, nil},
		{"contents altered", stream(record(narFile("hellO", false), text)), ErrBadExport, nil},
		{"reference dropped", stream(record(narFile("uses "+dep, false), textRef)), ErrBadExport, nil},
		{"reference added", stream(record(narFile("hello", false), text, dep)), ErrBadExport, nil},
		{"executable is not text", stream(record(narFile("hello", true), text)), ErrBadExport, nil},
		{"not content-addressed, not valid here", stream(record(narFile("x", false), "/nix/store/22222222222222222222222222222222-other")), ErrBadExport, nil},
		{"not content-addressed, valid here: skipped", stream(record(narFile("x", false), mine), record(narFile("hello", false), text)), nil, []string{text}},
		{"entries out of order", stream(record(narDir("b", "a"), mine)), ErrBadExport, nil},
		{"entry named ..", stream(record(narDir(".."), mine)), ErrBadExport, nil},
		{"path not a store path", stream(record(narFile("hello", false), "/tmp/x")), ErrBadExport, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spool, err := os.CreateTemp(t.TempDir(), "spool")
			if err != nil {
				t.Fatal(err)
			}
			defer spool.Close()
			var out bytes.Buffer
			err = filterExport(bytes.NewReader(tc.in), &out, spool, func(p string) (bool, error) { return p == mine, nil })
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			got, complete := parseStream(t, out.Bytes())
			if err != nil {
				if complete {
					t.Fatal("a refused stream went through whole")
				}
				return
			}
			if !complete || !slices.Equal(got, tc.want) {
				t.Fatalf("passed %v (complete %v), want %v", got, complete, tc.want)
			}
		})
	}
}

// parseStream reads what filterExport wrote: the paths and whether the
// stream ended with its end marker and nothing after it. Derivers must
// have been dropped.
func parseStream(t *testing.T, b []byte) ([]string, bool) {
	t.Helper()
	var got []string
	r := bytes.NewReader(b)
	for {
		more, err := wire.ReadUint64(r)
		if err != nil {
			return got, false
		}
		if more == 0 {
			return got, r.Len() == 0
		}
		if _, err := readNAR(r, sha256.New()); err != nil {
			return got, false
		}
		rec, err := readRecordTrailer(r)
		if err != nil {
			return got, false
		}
		if rec.deriver != "" {
			t.Errorf("deriver %q passed through", rec.deriver)
		}
		got = append(got, rec.path)
	}
}

// TestFilterExportReadError: an error of the reader is not ErrBadExport
// (the stream may be fine; the transport failed).
func TestFilterExportReadError(t *testing.T) {
	spool, err := os.CreateTemp(t.TempDir(), "spool")
	if err != nil {
		t.Fatal(err)
	}
	defer spool.Close()
	boom := errors.New("connection lost")
	good := stream(record(narFile("hello", false), textPath("hello", "a.txt")))
	r := io.MultiReader(bytes.NewReader(good[:30]), &failReader{boom})
	err = filterExport(r, io.Discard, spool, func(string) (bool, error) { return false, nil })
	if !errors.Is(err, boom) || errors.Is(err, ErrBadExport) {
		t.Fatalf("err = %v, want the read error and not ErrBadExport", err)
	}
}

type failReader struct{ err error }

func (f *failReader) Read([]byte) (int, error) { return 0, f.err }

const exportSample = `{ busybox, message }:
let
  bb = builtins.path {
    name = "busybox";
    path = builtins.dirOf busybox;
    filter = p: t: baseNameOf p == baseNameOf busybox;
  };
  flat = builtins.path { name = "flat.txt"; path = ./flat.txt; recursive = false; };
  script = builtins.toFile "script.sh" "echo $message > $out; cat ${flat} >> $out";
  dep = derivation {
    name = "dep"; system = builtins.currentSystem;
    builder = "${bb}/${baseNameOf busybox}"; args = [ "sh" "-c" "echo dep $message > $out" ];
    inherit message;
  };
  date = derivation {
    name = "date"; system = builtins.currentSystem;
    builder = "${bb}/${baseNameOf busybox}"; args = [ "sh" "-c" "head -c 16 /dev/urandom > $out" ];
    inherit message;
  };
in {
  top = derivation {
    name = "top"; system = builtins.currentSystem;
    builder = "${bb}/${baseNameOf busybox}"; args = [ "sh" "-c" ". ${script}; cat ${dep} >> $out" ];
    inherit message;
  };
  inherit date;
}
`

// TestExportImport exports a derivation's closure from one chroot store
// and imports it into another, which then builds it itself. It covers
// every kind of content address a closure holds: .drv files, a text file
// with references, a recursive and a flat source.
func TestExportImport(t *testing.T) {
	bb := testnix.Busybox(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "sample.nix"), []byte(exportSample), 0o644)
	os.WriteFile(filepath.Join(dir, "flat.txt"), []byte("flat\n"), 0o644)
	opts := OfflineOptions()
	opts["sandbox"] = "false"
	a := &Nix{Root: t.TempDir(), Options: opts}
	b := &Nix{Root: t.TempDir(), Options: opts}
	c := &Nix{Root: t.TempDir(), Options: opts}
	args := map[string]string{"busybox": bb}
	argstrs := map[string]string{"message": t.Name() + time.Now().String()}
	drvs, err := a.Instantiate(ctx, filepath.Join(dir, "sample.nix"), "top", args, argstrs)
	if err != nil {
		t.Fatal(err)
	}
	top := drvs[0]
	outA, err := a.Realise(ctx, top)
	if err != nil {
		t.Fatal(err)
	}
	req, err := a.Requisites(ctx, top)
	if err != nil {
		t.Fatal(err)
	}
	// .drv files and sources, never an output (dep's is valid in a now).
	for _, p := range req {
		if !strings.HasSuffix(p, ".drv") && !strings.HasSuffix(p, "-busybox") && !strings.HasSuffix(p, "-flat.txt") && !strings.HasSuffix(p, "-script.sh") {
			t.Fatalf("requisites of %s hold %s", top, p)
		}
	}
	if len(req) != 5 {
		t.Fatalf("requisites %v", req)
	}

	var exp bytes.Buffer
	if err := a.Export(ctx, &exp, req...); err != nil {
		t.Fatal(err)
	}
	imported, err := b.Import(ctx, bytes.NewReader(exp.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if slices.Sort(imported); !slices.Equal(imported, slices.Sorted(slices.Values(req))) {
		t.Fatalf("imported %v, want %v", imported, req)
	}
	if inv, err := b.Invalid(ctx, req...); err != nil || len(inv) != 0 {
		t.Fatalf("invalid after import: %v %v", inv, err)
	}
	// b builds everything itself, dep included, and gets a's bytes.
	outB, err := b.RealiseWith(ctx, RealiseOptions{NoSubstitute: true}, top)
	if err != nil || !slices.Equal(outA, outB) {
		t.Fatalf("realise in b: %v %v", outB, err)
	}
	infos, err := b.PathInfo(ctx, outB[0])
	if err != nil {
		t.Fatal(err)
	}
	infosA, _ := a.PathInfo(ctx, outA[0])
	if infos[0].NarHash != infosA[0].NarHash {
		t.Fatal("b built other bytes")
	}
	regs, err := b.PathInfos(ctx, outB[0])
	if err != nil || !regs[0].Ultimate {
		t.Fatalf("b's output not marked built here: %+v %v", regs, err)
	}
	// Importing again is a no-op; an output (not content-addressed) is
	// skipped where it is valid and refused where it is not.
	if _, err := b.Import(ctx, bytes.NewReader(exp.Bytes())); err != nil {
		t.Fatalf("import again: %v", err)
	}
	var outExp bytes.Buffer
	if err := a.Export(ctx, &outExp, outA[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Import(ctx, bytes.NewReader(outExp.Bytes())); err != nil {
		t.Fatalf("import of an output valid here: %v", err)
	}
	if _, err := c.Import(ctx, bytes.NewReader(outExp.Bytes())); !errors.Is(err, ErrBadExport) {
		t.Fatalf("import of an output: %v, want ErrBadExport", err)
	}
	if inv, _ := c.Invalid(ctx, outA[0]); len(inv) != 1 {
		t.Fatal("refused output is valid in c")
	}
	// A truncated closure fails cleanly and leaves the .drv out.
	if _, err := c.Import(ctx, bytes.NewReader(exp.Bytes()[:exp.Len()-100])); !errors.Is(err, ErrBadExport) || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("truncated import: %v", err)
	}
	if inv, _ := c.Invalid(ctx, top); len(inv) != 1 {
		t.Fatal("the .drv of a truncated closure is valid")
	}

	// --check: a deterministic output checks; one writing the time does not.
	if _, err := b.RealiseWith(ctx, RealiseOptions{Check: true}, top); err != nil {
		t.Fatalf("check: %v", err)
	}
	dd, err := b.Instantiate(ctx, filepath.Join(dir, "sample.nix"), "date", args, argstrs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Realise(ctx, dd[0]); err != nil {
		t.Fatal(err)
	}
	_, err = b.RealiseWith(ctx, RealiseOptions{Check: true}, dd[0])
	if !errors.Is(err, ErrNotDeterministic) || errors.Is(err, ErrBuildFailed) {
		t.Fatalf("check of a non-deterministic build: %v", err)
	}
}
