package contentaddr

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Paths and content addresses printed by Nix 2.8's `nix path-info --json`
// on this host for nix-store --add (a file and a directory),
// nix-store --add-fixed sha256 (flat) and builtins.toFile (with and
// without a reference).
var golden = []struct {
	path, ca string
	refs     []string
}{
	{"/nix/store/7imcq1hfrh8944lhbz5rqg447sysfjl7-f.txt", "fixed:r:sha256:11mv167i6962y21iizabrw5h9j9g8csr0h12banvj1lzp2g35ifl", nil},
	{"/nix/store/h97b2v1mpva3fwnjbrr4yfdjyndj04fl-d", "fixed:r:sha256:16bgv7k5078n3n4zg41hnybrc4fa0j6q8cyx31qc9p2qwp9xsgib", nil},
	{"/nix/store/hzc7460rd9hjkskb1llsj3jmfnc1mj4r-f.txt", "fixed:sha256:06h8a9gk1cq82dfl06p3wyqfhchkwbyzl4acakf3blxwmqy8ahh3", nil},
	{"/nix/store/wwfqd5wra0j07ylydi81p2p5ancnq1h9-greet.txt", "text:sha256:195sragjc913zdk67c376rv4mmwgcs304sncc34vp32l3pza35lv", nil},
	{"/nix/store/xqf77dnb29xrrmn8sd4206axr6rlx7hi-ref.txt", "text:sha256:0xb3gqrhvad5pi7hfmxb0zm5vmxi0fgwm6n0ykr6n444rlmxfvds",
		[]string{"/nix/store/wwfqd5wra0j07ylydi81p2p5ancnq1h9-greet.txt"}},
}

func TestGolden(t *testing.T) {
	for _, g := range golden {
		c, err := Parse(g.ca)
		if err != nil {
			t.Fatal(err)
		}
		if c.String() != g.ca {
			t.Errorf("String() = %s, want %s", c, g.ca)
		}
		if err := c.Check(g.path, g.refs); err != nil {
			t.Errorf("%s: %v", g.path, err)
		}
		// Another name, another reference or another hash is another path.
		if err := c.Check(strings.Replace(g.path, "-", "-x", 1), g.refs); !errors.Is(err, ErrPathMismatch) {
			t.Errorf("renamed %s: %v", g.path, err)
		}
		c2 := c
		c2.Hash[0] ^= 1
		if err := c2.Check(g.path, g.refs); !errors.Is(err, ErrPathMismatch) {
			t.Errorf("other hash %s: %v", g.path, err)
		}
		if c.Method != Flat {
			if err := c.Check(g.path, append(g.refs, "/nix/store/00000000000000000000000000000000-x")); !errors.Is(err, ErrPathMismatch) {
				t.Errorf("extra reference %s: %v", g.path, err)
			}
		}
	}
}

func TestParseRefuses(t *testing.T) {
	for _, s := range []string{
		"", "fixed", "fixed:sha256", "fixed:r:sha1:1234567890123456789012345678901234567890",
		"fixed:md5:00000000000000000000000000000000", "text:sha512:abc", "fixed:git:sha1:abc",
		"fixed:r:sha256:11mv167i6962y21iizabrw5h9j9g8csr0h12banvj1lzp2g35if",  // short
		"fixed:r:sha256:11mv167i6962y21iizabrw5h9j9g8csr0h12banvj1lzp2g35ife", // 'e' is not nix32
		"source:sha256:11mv167i6962y21iizabrw5h9j9g8csr0h12banvj1lzp2g35ifl",
	} {
		if _, err := Parse(s); !errors.Is(err, ErrInvalid) {
			t.Errorf("Parse(%q) = %v, want ErrInvalid", s, err)
		}
	}
	flat, _ := Parse(golden[2].ca)
	if _, err := flat.StorePath("/nix/store", "f.txt", []string{golden[3].path}, false); !errors.Is(err, ErrInvalid) {
		t.Errorf("flat with a reference: %v", err)
	}
	text, _ := Parse(golden[3].ca)
	if _, err := text.StorePath("/nix/store", "greet.txt", nil, true); !errors.Is(err, ErrInvalid) {
		t.Errorf("text with a self reference: %v", err)
	}
	if _, err := text.StorePath("/nix/store", "bad name", nil, false); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad name: %v", err)
	}
}

// TestHostNix adds fresh content with the host's nix and checks that every
// path it made is the one this package computes from its CA.
func TestHostNix(t *testing.T) {
	if _, err := exec.LookPath("nix-store"); err != nil {
		t.Fatal("nix-store not found: apt-get install -y nix-bin")
	}
	dir := t.TempDir()
	uniq := filepath.Base(dir)
	file := filepath.Join(dir, "file.txt")
	if err := os.WriteFile(file, []byte("content "+uniq), 0o644); err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(filepath.Join(tree, "sub"), 0o755)
	os.WriteFile(filepath.Join(tree, "sub", "x"), []byte(uniq), 0o755)
	os.Symlink("sub/x", filepath.Join(tree, "link"))
	env := append(os.Environ(), "NIX_CONFIG=substituters =\nbuild-users-group =\nexperimental-features = nix-command")
	run := func(args ...string) string {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = env
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		return strings.Trim(strings.TrimSpace(string(out)), `"`)
	}
	text := run("nix-instantiate", "--read-write-mode", "--eval", "-E", `builtins.toFile "t.txt" "`+uniq+`"`)
	paths := []string{
		run("nix-store", "--add", file),
		run("nix-store", "--add", tree),
		run("nix-store", "--add-fixed", "sha256", file),
		text,
		run("nix-instantiate", "--read-write-mode", "--eval", "-E", `builtins.toFile "r.txt" "${builtins.toFile "t.txt" "`+uniq+`"}"`),
	}
	var infos []struct {
		Path       string   `json:"path"`
		CA         string   `json:"ca"`
		References []string `json:"references"`
	}
	if err := json.Unmarshal([]byte(run(append([]string{"nix", "path-info", "--json"}, paths...)...)), &infos); err != nil {
		t.Fatal(err)
	}
	if len(infos) != len(paths) {
		t.Fatalf("path-info: %d infos for %d paths", len(infos), len(paths))
	}
	for _, in := range infos {
		c, err := Parse(in.CA)
		if err != nil {
			t.Fatalf("%s: %v", in.Path, err)
		}
		if err := c.Check(in.Path, in.References); err != nil {
			t.Errorf("%s: %v", in.Path, err)
		}
		if c.Method == Flat || c.Method == Text {
			b, _ := os.ReadFile(in.Path)
			if sha256.Sum256(b) != c.Hash {
				t.Errorf("%s: file sha256 differs from its CA", in.Path)
			}
		}
	}
}
