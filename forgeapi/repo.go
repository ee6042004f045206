package forgeapi

import (
	"fmt"
	"strings"
)

// SplitRepo splits a repository named "owner/repo", as --repo and the
// Actions variable GITHUB_REPOSITORY give it. Anything else (no slash, an
// empty part, a second slash) matches ErrInvalid.
func SplitRepo(s string) (owner, repo string, err error) {
	owner, repo, ok := strings.Cut(s, "/")
	if !ok || checkRepo(owner, repo) != nil {
		return "", "", fmt.Errorf("repository %q: want owner/repo: %w", s, ErrInvalid)
	}
	return owner, repo, nil
}
