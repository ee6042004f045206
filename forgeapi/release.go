package forgeapi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Asset is one file of AttachBundles' answer.
type Asset struct {
	Name        string
	Size        int64
	DownloadURL string
	Uploaded    bool // false: an asset of the same name and size was there already
}

// AttachBundles attaches files (Sigstore bundles, provenance) as assets of
// the release of tag in owner/repo, named by their base names. An asset
// already there with the same name and size is skipped, so running it again
// adds nothing; one with the same name and another size is an
// ErrAssetConflict, never replaced. No release for the tag is ErrNoRelease
// (which is an ErrNotFound): create the release first, a bare tag is not
// enough.
func (c *Client) AttachBundles(ctx context.Context, owner, repo, tag string, files []string) ([]Asset, error) {
	if err := checkRepo(owner, repo); err != nil {
		return nil, err
	}
	if tag == "" {
		return nil, fmt.Errorf("forgeapi: release assets on %s/%s: %w: empty tag", owner, repo, ErrInvalid)
	}
	// Check the files before touching the forge, so a typo uploads nothing.
	type local struct {
		path, name string
		size       int64
	}
	var locals []local
	seen := map[string]string{}
	for _, p := range files {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("forgeapi: %w: %w", ErrInvalid, err)
		}
		if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("forgeapi: %s: %w: not a regular file", p, ErrInvalid)
		}
		name := filepath.Base(p)
		if other, dup := seen[name]; dup {
			return nil, fmt.Errorf("forgeapi: %s and %s: %w: same asset name %q", other, p, ErrInvalid, name)
		}
		seen[name] = p
		locals = append(locals, local{path: p, name: name, size: fi.Size()})
	}

	ctx, cancel := withTimeout(ctx)
	defer cancel()
	api := c.sdk(ctx)
	rel, resp, err := api.GetReleaseByTag(owner, repo, tag)
	if err != nil {
		err = apiError(fmt.Sprintf("release of tag %q in %s/%s", tag, owner, repo), resp, err)
		if errors.Is(err, ErrNotFound) {
			return nil, fmt.Errorf("forgeapi: %s/%s has no release for tag %q (or no such repository); create the release first: %w", owner, repo, tag, ErrNoRelease)
		}
		return nil, err
	}
	existing := map[string]int64{}
	urls := map[string]string{}
	for _, a := range rel.Attachments {
		existing[a.Name] = a.Size
		urls[a.Name] = a.DownloadURL
	}

	out := make([]Asset, 0, len(locals))
	for _, l := range locals {
		if size, ok := existing[l.name]; ok {
			if size != l.size {
				return out, fmt.Errorf("forgeapi: release %q of %s/%s: asset %s has %d bytes, %s has %d: %w", tag, owner, repo, l.name, size, l.path, l.size, ErrAssetConflict)
			}
			out = append(out, Asset{Name: l.name, Size: size, DownloadURL: urls[l.name]})
			continue
		}
		a, err := c.upload(ctx, owner, repo, rel.ID, tag, l.path, l.name)
		if err != nil {
			return out, err
		}
		out = append(out, a)
	}
	return out, nil
}

func (c *Client) upload(ctx context.Context, owner, repo string, releaseID int64, tag, path, name string) (Asset, error) {
	f, err := os.Open(path)
	if err != nil {
		return Asset{}, fmt.Errorf("forgeapi: %w", err)
	}
	defer f.Close()
	a, resp, err := c.sdk(ctx).CreateReleaseAttachment(owner, repo, releaseID, f, name)
	if err != nil {
		return Asset{}, apiError(fmt.Sprintf("attach %s to release %q of %s/%s", name, tag, owner, repo), resp, err)
	}
	return Asset{Name: a.Name, Size: a.Size, DownloadURL: a.DownloadURL, Uploaded: true}, nil
}
