package cacheclient

import (
	"context"
	"errors"
	"fmt"

	"github.com/nix-community/go-nix/pkg/narinfo"

	"codeberg.org/provenix/provenix/contentaddr"
)

// verifyCA checks a content-addressed path: the NAR against NarHash and
// NarSize as VerifyNAR does, the CA hash against the NAR (recursive) or
// against the one regular file the NAR holds (flat, text), and the store
// path against the one Nix computes from the CA, the name and the
// references (package contentaddr). When all hold, the path names its
// content: no signature is needed to trust it (Nix's own rule for
// content-addressed paths).
func (c *Client) verifyCA(ctx context.Context, ni *narinfo.NarInfo) (NARDigest, error) {
	ca, err := contentaddr.Parse(ni.CA)
	if err != nil {
		return NARDigest{}, fmt.Errorf("%w: %s: %v", ErrMalformed, ni.StorePath, err)
	}
	if err := ca.Check(ni.StorePath, References(ni)); err != nil {
		return NARDigest{}, fmt.Errorf("%s: %w: %w", ni.StorePath, ErrMismatch, err)
	}
	r, err := c.NAR(ctx, ni)
	if err != nil {
		return NARDigest{}, err
	}
	defer r.Close()
	err = ca.CheckNAR(r, ni.StorePath)
	switch {
	case errors.Is(err, contentaddr.ErrContentMismatch):
		// The NAR was read to its end: its digest is known.
		return r.(*narReader).digest(), fmt.Errorf("%w: %w", ErrMismatch, err)
	case err != nil:
		return NARDigest{}, err
	}
	return r.(*narReader).digest(), nil
}
