package cachepush

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/cache-push/server"
	"codeberg.org/provenix/provenix/contentaddr"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/queue"
)

// TestClosureRealNixSources: content-addressed paths made by the host's
// Nix (nix-store --add of a directory, --add-fixed of a file,
// builtins.toFile with a reference to another) are admitted from their
// real NARs and CAs, and stock Nix substitutes them from the cache into an
// empty store.
func TestClosureRealNixSources(t *testing.T) {
	if err := nix.Available(); err != nil {
		t.Fatalf("%v: apt-get install -y nix-bin", err)
	}
	cf := newClosureFixture(t, "", 1, nil)
	env := append(os.Environ(), "NIX_CONFIG=substituters =\nbuild-users-group =\nexperimental-features = nix-command")
	run := func(args ...string) []byte {
		t.Helper()
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = env
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		return out
	}
	str := func(args ...string) string { return strings.Trim(strings.TrimSpace(string(run(args...))), `"`) }
	dir := t.TempDir()
	uniq := filepath.Base(dir)
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(filepath.Join(tree, "bin"), 0o755)
	os.WriteFile(filepath.Join(tree, "bin", "tool"), []byte("#!/bin/sh\necho "+uniq+"\n"), 0o755)
	file := filepath.Join(dir, "data.txt")
	os.WriteFile(file, []byte("flat "+uniq+"\n"), 0o644)
	greet := `builtins.toFile "greet.txt" "` + uniq + `"`
	paths := []string{
		str("nix-store", "--add", tree),
		str("nix-store", "--add-fixed", "sha256", file),
		str("nix-instantiate", "--read-write-mode", "--eval", "-E", greet),
		str("nix-instantiate", "--read-write-mode", "--eval", "-E", `builtins.toFile "ref.txt" "see ${`+greet+`}"`),
	}
	var infos []struct {
		Path       string   `json:"path"`
		CA         string   `json:"ca"`
		References []string `json:"references"`
	}
	if err := json.Unmarshal(run(append([]string{"nix", "path-info", "--json"}, paths...)...), &infos); err != nil {
		t.Fatal(err)
	}
	var sources []queue.Output
	for _, in := range infos {
		n := run("nix-store", "--dump", in.Path)
		h := sha256.Sum256(n)
		o := queue.Output{Name: "source", Path: in.Path, NarHash: hex.EncodeToString(h[:]), NarSize: uint64(len(n)),
			StagingKey: queue.StagingKey(hex.EncodeToString(h[:])), References: in.References, CA: in.CA}
		if _, err := cf.conn.Stage(testctx.New(t, 60*time.Second), o.StagingKey, bytes.NewReader(n)); err != nil {
			t.Fatal(err)
		}
		if _, err := contentaddr.Parse(in.CA); err != nil {
			t.Fatal(err)
		}
		sources = append(sources, o)
	}
	// The text path referring to another comes first: it waits for it.
	sources[2], sources[3] = sources[3], sources[2]
	r, d := cf.result(t, drvResult{name: "uses-" + uniq, refs: paths, sources: sources})
	cf.process(t, r, d)
	for _, p := range append(paths, r.Outputs[0].Path) {
		if !cf.isVisible(t, p) {
			t.Fatalf("%s not published", p)
		}
	}

	srv := httptest.NewServer(server.Handler(cf.store, server.Options{}))
	defer srv.Close()
	chroot := t.TempDir()
	cmd := exec.Command("nix-store", "--store", chroot, "-r", paths[3], paths[0], paths[1],
		"--option", "substituters", srv.URL, "--option", "trusted-public-keys", cf.cachePub.String(),
		"--option", "narinfo-cache-negative-ttl", "0", "--option", "build-users-group", "")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("stock nix does not substitute the sources: %v\n%s", err, out)
	}
	got, err := os.ReadFile(filepath.Join(chroot, paths[3]))
	if err != nil || !strings.Contains(string(got), paths[2]) {
		t.Fatalf("substituted %s: %q %v", paths[3], got, err)
	}
	if _, err := os.Stat(filepath.Join(chroot, paths[2])); err != nil {
		t.Fatalf("its reference was not substituted: %v", err)
	}
}
