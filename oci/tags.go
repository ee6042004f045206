package oci

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/storepath"
)

// Names of the distribution spec.
var (
	repoRE = regexp.MustCompile(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$`)
	tagRE  = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
)

// maxRepoLen keeps tag keys well inside store.MaxKeyLen.
const maxRepoLen = 255

// NixRepoPrefix starts the repositories named after store paths
// (nix/<hash>-<name>, tag "latest"); operators' tags live elsewhere.
const NixRepoPrefix = "nix/"

// LatestTag is the tag of a nix/<hash>-<name> repository's own path.
const LatestTag = "latest"

// tagVersion is the version of the tag record.
const tagVersion = 1

// Tag is what an operator's tag points to; it is stored under
// cachelayout.OCITagKey, so every server of the cache serves the same.
type Tag struct {
	Version   int    `json:"version"`
	StorePath string `json:"storePath"`
	// Entrypoint, when set, replaces the one taken from the path's bin/.
	Entrypoint []string `json:"entrypoint,omitempty"`
}

// Errors of tagging and naming.
var (
	// ErrName: a repository or tag name the distribution spec does not
	// allow, or one reserved for store paths.
	ErrName = errors.New("oci: invalid name")
	// ErrNotPublished: the store path has no narinfo in the cache.
	ErrNotPublished = errors.New("oci: store path not published in this cache")
	// ErrTooLarge: a closure beyond the registry's bound.
	ErrTooLarge = errors.New("oci: closure too large")
)

// ParseRef splits NAME:TAG and checks both.
func ParseRef(ref string) (repo, tag string, err error) {
	i := strings.LastIndex(ref, ":")
	if i < 0 || strings.Contains(ref[i:], "/") {
		return "", "", fmt.Errorf("%w: %q: want NAME:TAG", ErrName, ref)
	}
	repo, tag = ref[:i], ref[i+1:]
	if err := checkRepo(repo); err != nil {
		return "", "", err
	}
	if !tagRE.MatchString(tag) {
		return "", "", fmt.Errorf("%w: tag %q", ErrName, tag)
	}
	return repo, tag, nil
}

func checkRepo(repo string) error {
	if len(repo) > maxRepoLen || !repoRE.MatchString(repo) {
		return fmt.Errorf("%w: repository %q", ErrName, repo)
	}
	return nil
}

// SetTag points repo:tag (ref, as NAME:TAG) at the published storePath,
// with entrypoint (nil: from the path's bin/). Repositories under nix/ are
// the store paths' own and cannot be tagged.
func SetTag(ctx context.Context, st store.Store, ref, storePath string, entrypoint []string) error {
	repo, tag, err := ParseRef(ref)
	if err != nil {
		return err
	}
	if strings.HasPrefix(repo, NixRepoPrefix) {
		return fmt.Errorf("%w: %q: repositories under %s are the store paths' own", ErrName, repo, NixRepoPrefix)
	}
	if err := storepath.Check(storePath); err != nil {
		return fmt.Errorf("oci tag: %w", err)
	}
	if _, err := st.Stat(ctx, cachelayout.NarinfoKey(storePath)); errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: %s", ErrNotPublished, storePath)
	} else if err != nil {
		return fmt.Errorf("oci tag: %w", err)
	}
	for _, a := range entrypoint {
		if a == "" {
			return fmt.Errorf("%w: an empty entrypoint argument", ErrName)
		}
	}
	return writeRecord(ctx, st, cachelayout.OCITagKey(repo, tag), Tag{Version: tagVersion, StorePath: storePath, Entrypoint: entrypoint})
}

// DeleteTag removes repo:tag; removing an absent tag succeeds.
func DeleteTag(ctx context.Context, st store.Store, ref string) error {
	repo, tag, err := ParseRef(ref)
	if err != nil {
		return err
	}
	return st.Delete(ctx, cachelayout.OCITagKey(repo, tag))
}

// readTag reads repo:tag; a missing or unreadable tag is store.ErrNotFound.
func readTag(ctx context.Context, st store.Store, repo, tag string) (*Tag, error) {
	b, err := store.ReadAll(ctx, st, cachelayout.OCITagKey(repo, tag), maxRecordSize)
	if err != nil {
		return nil, err
	}
	var t Tag
	if err := json.Unmarshal(b, &t); err != nil || t.Version != tagVersion || storepath.Check(t.StorePath) != nil {
		return nil, fmt.Errorf("tag %s:%s: unreadable record: %w", repo, tag, store.ErrNotFound)
	}
	return &t, nil
}

// listTags returns the tags of repo, sorted.
func listTags(ctx context.Context, st store.Store, repo string) ([]string, error) {
	prefix := cachelayout.OCITagRepoPrefix(repo)
	var tags []string
	err := st.List(ctx, prefix, func(i store.Info) error {
		if t, ok := strings.CutSuffix(strings.TrimPrefix(i.Key, prefix), ".json"); ok && tagRE.MatchString(t) {
			tags = append(tags, t)
		}
		return nil
	})
	slices.Sort(tags)
	return tags, err
}
