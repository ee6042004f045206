package forgeapi

import (
	"errors"
	"testing"
)

func TestSplitRepo(t *testing.T) {
	owner, repo, err := SplitRepo("distro/pkgs")
	if err != nil || owner != "distro" || repo != "pkgs" {
		t.Fatalf("SplitRepo = %q %q %v", owner, repo, err)
	}
	for _, bad := range []string{"", "pkgs", "/pkgs", "distro/", "a/b/c"} {
		if o, r, err := SplitRepo(bad); !errors.Is(err, ErrInvalid) || o != "" || r != "" {
			t.Errorf("SplitRepo(%q) = %q %q %v; want ErrInvalid", bad, o, r, err)
		}
	}
}
