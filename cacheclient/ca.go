package cacheclient

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"path"
	"slices"
	"strings"

	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"
	"github.com/nix-community/go-nix/pkg/storepath"
)

// contentAddress is a parsed narinfo CA field.
type contentAddress struct {
	method string // "text", "flat" or "nar"
	hash   *nixhash.HashWithEncoding
}

// parseCA reads "text:sha256:H", "fixed:sha256:H" (flat) and
// "fixed:r:ALGO:H" (recursive, NAR serialisation).
func parseCA(s string) (contentAddress, error) {
	var ca contentAddress
	rest, ok := strings.CutPrefix(s, "text:")
	switch {
	case ok:
		ca.method = "text"
	case strings.HasPrefix(s, "fixed:r:"):
		ca.method, rest = "nar", s[len("fixed:r:"):]
	case strings.HasPrefix(s, "fixed:"):
		ca.method, rest = "flat", s[len("fixed:"):]
	default:
		return ca, fmt.Errorf("%w: content address %q: unknown method", ErrMalformed, s)
	}
	h, err := nixhash.ParseAny(rest, nil)
	if err != nil {
		return ca, fmt.Errorf("%w: content address %q: %v", ErrMalformed, s, err)
	}
	if ca.method == "text" && h.Algo() != nixhash.SHA256 {
		return ca, fmt.Errorf("%w: content address %q: text needs sha256", ErrMalformed, s)
	}
	ca.hash = h
	return ca, nil
}

// makeStorePath is Nix's makeStorePath for /nix/store.
func makeStorePath(typ string, sha256Digest []byte, name string) string {
	s := typ + ":sha256:" + hex.EncodeToString(sha256Digest) + ":" + storepath.StoreDir + ":" + name
	d := sha256.Sum256([]byte(s))
	return storepath.StoreDir + "/" + nixbase32.EncodeToString(nixhash.CompressHash(d[:], 20)) + "-" + name
}

// caStorePath is the store path Nix computes for a content-addressed path
// named name with references refs (absolute), as in Nix's
// makeFixedOutputPath and makeTextPath.
func caStorePath(ca contentAddress, name, self string, refs []string) (string, error) {
	var others []string
	hasSelf := false
	for _, r := range refs {
		if r == self {
			hasSelf = true
			continue
		}
		others = append(others, r)
	}
	slices.Sort(others)
	refType := func(typ string) string {
		for _, r := range others {
			typ += ":" + r
		}
		if hasSelf {
			typ += ":self"
		}
		return typ
	}
	switch {
	case ca.method == "text":
		if hasSelf {
			return "", fmt.Errorf("%w: a text path cannot refer to itself", ErrMismatch)
		}
		return makeStorePath(refType("text"), ca.hash.Digest(), name), nil
	case ca.method == "nar" && ca.hash.Algo() == nixhash.SHA256:
		return makeStorePath(refType("source"), ca.hash.Digest(), name), nil
	default:
		if len(refs) > 0 {
			return "", fmt.Errorf("%w: a fixed-output path cannot have references", ErrMismatch)
		}
		r := ""
		if ca.method == "nar" {
			r = "r:"
		}
		inner := sha256.Sum256([]byte("fixed:out:" + r + ca.hash.Algo().String() + ":" + hex.EncodeToString(ca.hash.Digest()) + ":"))
		return makeStorePath("output:out", inner[:], name), nil
	}
}

// verifyCA checks a content-addressed path: the NAR against NarHash and
// NarSize as VerifyNAR does, the CA hash against the NAR (recursive) or
// against the one regular file the NAR holds (flat, text), and the store
// path against the one Nix computes from the CA, the name and the
// references. When all hold, the path names its content: no signature is
// needed to trust it (Nix's own rule for content-addressed paths).
func (c *Client) verifyCA(ctx context.Context, ni *narinfo.NarInfo) (NARDigest, error) {
	ca, err := parseCA(ni.CA)
	if err != nil {
		return NARDigest{}, err
	}
	sp, _ := storepath.FromAbsolutePath(ni.StorePath)
	want, err := caStorePath(ca, sp.Name, ni.StorePath, References(ni))
	if err != nil {
		return NARDigest{}, fmt.Errorf("%s: %w", ni.StorePath, err)
	}
	if want != ni.StorePath {
		return NARDigest{}, fmt.Errorf("%w: content address %s with its references gives %s, not %s", ErrMismatch, ni.CA, want, ni.StorePath)
	}
	r, err := c.NAR(ctx, ni)
	if err != nil {
		return NARDigest{}, err
	}
	defer r.Close()
	h := ca.hash.Algo().Func().New()
	if ca.method == "nar" {
		_, err = io.Copy(h, r)
	} else {
		err = hashFlatFile(r, h)
	}
	if err != nil {
		return NARDigest{}, err
	}
	d := r.(*narReader).digest()
	if !bytes.Equal(h.Sum(nil), ca.hash.Digest()) {
		return d, fmt.Errorf("%s: %w: the content does not hash to its content address %s", ni.StorePath, ErrMismatch, ni.CA)
	}
	return d, nil
}

// hashFlatFile hashes the contents of the single regular file a NAR holds,
// then drains the NAR so that its own checks run to the end.
func hashFlatFile(r io.Reader, h hash.Hash) error {
	nr, err := nar.NewReader(r)
	if err != nil {
		return fmt.Errorf("%w: NAR: %v", ErrMismatch, err)
	}
	hdr, err := nr.Next()
	if err != nil {
		return fmt.Errorf("%w: NAR: %v", ErrMismatch, err)
	}
	if hdr.Type != nar.TypeRegular || path.Clean(hdr.Path) != "/" {
		return fmt.Errorf("%w: a flat or text content address needs a NAR of one regular file, not a %s", ErrMismatch, hdr.Type)
	}
	if _, err := io.Copy(h, nr); err != nil {
		return err
	}
	if _, err := nr.Next(); err != io.EOF {
		return fmt.Errorf("%w: NAR: more than one file (%v)", ErrMismatch, err)
	}
	_, err = io.Copy(io.Discard, r)
	return err
}
