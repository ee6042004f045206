package builder

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"

	"codeberg.org/provenix/provenix/attest"
)

func TestParseTarget(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "pkg.nix")
	if err := os.WriteFile(file, []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	withDefault := filepath.Join(dir, "withdefault")
	os.Mkdir(withDefault, 0o755)
	os.WriteFile(filepath.Join(withDefault, "default.nix"), []byte("{}"), 0o644)
	empty := filepath.Join(dir, "empty")
	os.Mkdir(empty, 0o755)
	t.Chdir(dir)

	const drv = "/nix/store/g5s1vk624lv2dj6jhzgdvygm842l9hiv-hello.drv"
	for _, tc := range []struct {
		name, target string
		want         attest.Installable
	}{
		{"drv path", drv, attest.Installable{Kind: KindDrv, Ref: drv}},
		{"flake attr", ".#hello", attest.Installable{Kind: KindFlake, Ref: ".#hello"}},
		{"flake ref", "github:NixOS/nixpkgs#hello", attest.Installable{Kind: KindFlake, Ref: "github:NixOS/nixpkgs#hello"}},
		{"flake without attr", "path:/src", attest.Installable{Kind: KindFlake, Ref: "path:/src"}},
		{"relative file, made absolute", "pkg.nix", attest.Installable{Kind: KindFile, File: file, Attr: "hello"}},
		{"absolute file", file, attest.Installable{Kind: KindFile, File: file, Attr: "hello"}},
		{"directory with default.nix", "withdefault", attest.Installable{Kind: KindFile, File: withDefault, Attr: "hello"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseTarget(tc.target, "hello")
			if err != nil || got != tc.want {
				t.Fatalf("ParseTarget(%q) = %+v, %v; want %+v", tc.target, got, err, tc.want)
			}
		})
	}
	for _, tc := range []struct{ name, target, msg string }{
		{"relative drv", "nix/store/x-hello.drv", "nix/store/x-hello.drv: a derivation target must be an absolute store path"},
		{"missing file", "missing.nix", "target missing.nix: stat missing.nix: no such file or directory (want FILE.nix -A ATTR, a .drv path or FLAKEREF#ATTR)"},
		{"directory without default.nix", "empty", "target empty: a directory without default.nix"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseTarget(tc.target, "hello")
			if !errors.Is(err, ErrTarget) || err.Error() != tc.msg {
				t.Fatalf("ParseTarget(%q) = %+v, %v; want ErrTarget %q", tc.target, got, err, tc.msg)
			}
		})
	}
}

func TestParsePairs(t *testing.T) {
	got, err := ParsePairs("arg", []string{"busybox=/bin/busybox", "expr=a == b", "empty="})
	want := map[string]string{"busybox": "/bin/busybox", "expr": "a == b", "empty": ""}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("ParsePairs = %v, %v; want %v", got, err, want)
	}
	for _, bad := range []string{"novalue", "=value"} {
		if _, err := ParsePairs("argstr", []string{bad}); !errors.Is(err, ErrTarget) || err.Error() != `--argstr "`+bad+`": want NAME=VALUE` {
			t.Errorf("ParsePairs(%q): %v", bad, err)
		}
	}
}

// TestParseTargets: every target is classified before any is returned; a
// file target in a git checkout records it when asked to, a given Source
// wins, and a flake target records none.
func TestParseTargets(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatal("git is needed: ", err)
	}
	ctx := context.Background()
	repo := t.TempDir()
	git := func(args ...string) {
		t.Helper()
		cmd := exec.CommandContext(ctx, "git", append([]string{"-C", repo, "-c", "user.name=t", "-c", "user.email=t@example.org"}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	git("init", "-q", "-b", "main")
	file := filepath.Join(repo, "sub", "pkg.nix")
	os.MkdirAll(filepath.Dir(file), 0o755)
	os.WriteFile(file, []byte("{}"), 0o644)
	git("add", ".")
	git("commit", "-q", "-m", "one")
	git("remote", "add", "origin", "https://forge.example/distro/pkgs.git")
	rev, err := exec.CommandContext(ctx, "git", "-C", repo, "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatal(err)
	}
	wantSrc := &attest.Source{Repository: "https://forge.example/distro/pkgs.git", Revision: string(rev[:len(rev)-1]), Ref: "refs/heads/main"}

	if got := GitSource(ctx, file); !reflect.DeepEqual(got, wantSrc) {
		t.Errorf("GitSource(file) = %+v, want %+v", got, wantSrc)
	}
	if got := GitSource(ctx, filepath.Dir(file)); !reflect.DeepEqual(got, wantSrc) {
		t.Errorf("GitSource(dir) = %+v, want %+v", got, wantSrc)
	}
	if got := GitSource(ctx, t.TempDir()); got != nil {
		t.Errorf("GitSource outside git = %+v, want nil", got)
	}

	args := map[string]string{"busybox": "/bin/busybox"}
	tgts, err := ParseTargets(ctx, []string{file, ".#hello"}, TargetOptions{Attr: "hello", Args: args, DetectGitSource: true, InvocationID: "run-1"})
	if err != nil || len(tgts) != 2 {
		t.Fatalf("ParseTargets: %v %v", tgts, err)
	}
	if !reflect.DeepEqual(tgts[0].Source, wantSrc) || tgts[0].Args["busybox"] != "/bin/busybox" || tgts[0].InvocationID != "run-1" || tgts[0].Installable.Attr != "hello" {
		t.Errorf("file target: %+v", tgts[0])
	}
	if tgts[1].Source != nil || tgts[1].Installable.Kind != KindFlake {
		t.Errorf("flake target: %+v", tgts[1])
	}
	tgts, err = ParseTargets(ctx, []string{file}, TargetOptions{})
	if err != nil || tgts[0].Source != nil {
		t.Errorf("without DetectGitSource: %+v %v", tgts, err)
	}
	given := &attest.Source{Repository: "r", Revision: "v"}
	tgts, err = ParseTargets(ctx, []string{file}, TargetOptions{Source: given, DetectGitSource: true})
	if err != nil || tgts[0].Source != given {
		t.Errorf("a given Source: %+v %v", tgts, err)
	}
	if tgts, err := ParseTargets(ctx, []string{file, "missing.nix"}, TargetOptions{}); !errors.Is(err, ErrTarget) || tgts != nil {
		t.Errorf("a bad last target: %v %v", tgts, err)
	}
}
