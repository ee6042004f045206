package nardiff

// Real Nix builds: the derivations of testdata/unrepro.nix are built by
// two builders (chroot stores under t.TempDir()) and their NARs, streamed from
// `nix-store --dump`, are compared. A missing tool fails the test.

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nar"

	"codeberg.org/provenix/provenix/internal/testnix"
)

// nixBuilder is one builder: a chroot store.
type nixBuilder struct{ root string }

func newNixBuilder(t *testing.T) nixBuilder { return nixBuilder{root: t.TempDir()} }

func (b nixBuilder) cmd(ctx context.Context, name string, args ...string) *exec.Cmd {
	a := []string{"--store", b.root, "--option", "substituters", "", "--option", "build-users-group", "", "--option", "sandbox", "false"}
	return exec.CommandContext(ctx, name, append(a, args...)...)
}

// build builds attrs of file and returns their output paths by attr.
func (b nixBuilder) build(t *testing.T, ctx context.Context, file string, args []string, attrs ...string) map[string]string {
	t.Helper()
	a := append([]string{file, "--no-out-link"}, args...)
	for _, at := range attrs {
		a = append(a, "-A", at)
	}
	c := b.cmd(ctx, "nix-build", a...)
	var stderr strings.Builder
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		t.Fatalf("nix-build: %v\n%s", err, stderr.String())
	}
	paths := strings.Fields(string(out))
	if len(paths) != len(attrs) {
		t.Fatalf("nix-build gave %v for %v", paths, attrs)
	}
	m := map[string]string{}
	for i, at := range attrs {
		m[at] = paths[i]
	}
	return m
}

// dump streams the NAR of path from the builder's store, as the builder
// would stage it.
func (b nixBuilder) dump(t *testing.T, ctx context.Context, path string) (io.Reader, func()) {
	t.Helper()
	// --dump takes a file system path: the path's place in the chroot.
	c := exec.CommandContext(ctx, "nix-store", "--dump", filepath.Join(b.root, path))
	var stderr strings.Builder
	c.Stderr = &stderr
	r, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	return r, func() {
		io.Copy(io.Discard, r)
		if err := c.Wait(); err != nil {
			t.Errorf("nix-store --dump %s: %v\n%s", path, err, stderr.String())
		}
	}
}

func TestNixUnreproducible(t *testing.T) {
	bb := testnix.Busybox(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	nixFile, err := filepath.Abs("testdata/unrepro.nix")
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"--arg", "busybox", bb}
	attrs := []string{"date", "random", "seed", "order", "buildpath", "gzip"}
	a, b := newNixBuilder(t), newNixBuilder(t)
	outA := a.build(t, ctx, nixFile, args, attrs...)
	outB := b.build(t, ctx, nixFile, args, attrs...)

	for _, c := range []struct {
		attr, file string
		cause      CauseKind
		format     string
	}{
		{"date", "/info", CauseTimestamp, "text"},
		{"random", "/id", CauseRandom, "text"},
		{"seed", "/seed", CauseRandom, "binary"},
		{"order", "/listing", CauseFileOrder, "text"},
		{"buildpath", "/config", CauseBuildPath, "text"},
		{"gzip", "/page.1.gz", CauseTimestamp, "gzip"},
	} {
		if outA[c.attr] == "" {
			continue
		}
		t.Run(c.attr, func(t *testing.T) {
			if outA[c.attr] != outB[c.attr] {
				t.Fatalf("output paths differ: %s %s", outA[c.attr], outB[c.attr])
			}
			ra, doneA := a.dump(t, ctx, outA[c.attr])
			rb, doneB := b.dump(t, ctx, outB[c.attr])
			r, err := Diff(ctx, ra, rb, Options{LabelA: "builder-a", LabelB: "builder-b"})
			doneA()
			doneB()
			if err != nil {
				t.Fatalf("Diff: %v", err)
			}
			t.Logf("%s:\n%s", c.attr, r.Text())
			if r.Differing != 1 {
				t.Fatalf("%d differing entries, want 1 (%s)", r.Differing, c.file)
			}
			f := file(t, r, c.file)
			if f.Format != c.format {
				t.Errorf("format %s, want %s", f.Format, c.format)
			}
			if c.cause != "" && !hasCause(f.Causes, c.cause) {
				t.Errorf("causes %+v, want %s", f.Causes, c.cause)
			}
			s := r.Summary(3)
			if len(s.Files) == 0 || !strings.HasPrefix(s.Files[0], c.file) {
				t.Errorf("summary %+v", s)
			}
		})
	}
}

// TestELFSections: a small C program (gcc on the host; a Go program built
// with -ldflags -X where there is none) built twice with a different
// embedded string. The report names the ELF sections that differ, the
// read-only data among them, and the string's timestamp.
func TestELFSections(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	src := t.TempDir()
	build := func(stamp string) []byte {
		dir := t.TempDir()
		out := filepath.Join(dir, "bin", "hello")
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			t.Fatal(err)
		}
		var c *exec.Cmd
		if gcc, err := exec.LookPath("gcc"); err == nil {
			file := filepath.Join(src, "hello.c")
			os.WriteFile(file, []byte("#include <stdio.h>\nint main(void) { puts(\"hello, built \" STAMP); return 0; }\n"), 0o644)
			c = exec.CommandContext(ctx, gcc, "-O2", "-DSTAMP=\""+stamp+"\"", "-o", out, file)
		} else {
			file := filepath.Join(src, "main.go")
			os.WriteFile(file, []byte("package main\n\nvar s string\n\nfunc main() { println(\"hello, built\", s) }\n"), 0o644)
			c = exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-X main.s="+stamp, "-o", out, file)
			c.Env = append(os.Environ(), "GO111MODULE=off", "CGO_ENABLED=0")
		}
		if b, err := c.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", c.Args, err, b)
		}
		var n bytes.Buffer
		if err := nar.DumpPath(&n, dir); err != nil {
			t.Fatal(err)
		}
		return n.Bytes()
	}
	a := build("2026-12-06T02:00:00")
	b := build("2026-12-06T03:30:00")
	r := diffBytes(t, a, b, opts())
	t.Logf("\n%s", r.Text())
	f := file(t, r, "/bin/hello")
	if f.Format != "elf" || !slices.ContainsFunc(f.Sections, func(s string) bool { return s == ".rodata" }) {
		t.Fatalf("format %s, sections %v: want .rodata", f.Format, f.Sections)
	}
	if !hasCause(r.Causes, CauseTimestamp) {
		t.Errorf("the embedded time is not recognised: %+v", r.Causes)
	}
}
