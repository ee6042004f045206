package nix

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
)

// ErrVersion means `nix --version` printed no version this package reads.
var ErrVersion = errors.New("nix: unrecognised version")

// Version is a Nix release, as `nix --version` names it.
type Version struct {
	Major, Minor, Patch int
	// Lix: the Lix fork ("nix (Lix, like Nix) 2.91.1"), whose numbers
	// continue 2.18's CLI rather than CppNix 2.90's.
	Lix bool
}

// String is "2.8.0", or "2.91.1 (Lix)".
func (v Version) String() string {
	s := fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch)
	if v.Lix {
		s += " (Lix)"
	}
	return s
}

// AtLeast reports whether v is CppNix major.minor or later; Lix, which
// forked from 2.18, never is past 2.18.
func (v Version) AtLeast(major, minor int) bool {
	if v.Lix && (major > 2 || major == 2 && minor > 18) {
		return false
	}
	return v.Major > major || v.Major == major && v.Minor >= minor
}

// hasJSONFormat: `nix path-info --json-format N` exists (CppNix 2.33).
func (v Version) hasJSONFormat() bool { return v.AtLeast(2, 33) }

// hasConfigShow: `nix config show` exists (CppNix 2.20; Lix has it
// too) and `nix show-config` warns.
func (v Version) hasConfigShow() bool { return v.Lix || v.AtLeast(2, 20) }

var versionRE = regexp.MustCompile(`(\d+)\.(\d+)(?:\.(\d+))?`)

// ParseVersion reads the output of `nix --version`: "nix (Nix) 2.8.0",
// "nix (Nix) 2.34.0pre20260101_abcdef", "nix (Lix, like Nix) 2.91.1".
func ParseVersion(s string) (Version, error) {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i] // later lines list features
	}
	rest := s
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		rest = s[i+1:]
	}
	m := versionRE.FindStringSubmatch(rest)
	if m == nil {
		return Version{}, fmt.Errorf("%w: %q", ErrVersion, s)
	}
	var v Version
	v.Major, _ = strconv.Atoi(m[1])
	v.Minor, _ = strconv.Atoi(m[2])
	if m[3] != "" {
		v.Patch, _ = strconv.Atoi(m[3])
	}
	v.Lix = strings.Contains(s, "Lix")
	return v, nil
}

// versions caches each nix binary's version for the life of the process,
// keyed by its resolved path: only successes are kept, so a cancelled or
// failed first call is asked again next time.
var versions sync.Map // string → Version

// Version returns the version of the nix on PATH, asked once per binary
// per process. A chroot store (Root) does not change it: the same binary
// runs.
func (n *Nix) Version(ctx context.Context) (Version, error) {
	bin, err := exec.LookPath("nix")
	if err != nil {
		return Version{}, fmt.Errorf("%w (nix not found)", ErrNotInstalled)
	}
	if r, err := filepath.EvalSymlinks(bin); err == nil {
		bin = r
	}
	if v, ok := versions.Load(bin); ok {
		return v.(Version), nil
	}
	out, err := n.run(ctx, bin, "--version")
	if err != nil {
		return Version{}, err
	}
	v, err := ParseVersion(string(out))
	if err != nil {
		return Version{}, err
	}
	versions.Store(bin, v)
	return v, nil
}
