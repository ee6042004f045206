// Package contentaddr parses Nix content addresses ("fixed:r:sha256:…",
// "fixed:sha256:…", "text:sha256:…") and computes the store path Nix gives
// a content-addressed path, as Nix's makeStorePath, makeFixedOutputPath
// and makeTextPath do, and checks a NAR against one (NARChecker). The
// pusher admits content-addressed paths and cacheclient verifies them with
// these same functions. A content-addressed path proves itself: whoever
// knows its content, name and references can recompute its path, so a
// cache can admit it without trusting the builder that sent it.
package contentaddr

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"codeberg.org/provenix/provenix/storepath"
)

// ErrInvalid is the root of every refusal of a content address.
var ErrInvalid = errors.New("contentaddr: invalid content address")

// ErrPathMismatch: the store path is not the one the content address,
// name and references compute.
var ErrPathMismatch = errors.New("contentaddr: store path does not match its content address")

// Method is how the hash of a content address covers the content.
type Method int

const (
	// Flat: the sha256 of a single regular file's contents
	// ("fixed:sha256:…", a fixed-output derivation with outputHashMode
	// flat, e.g. a fetchurl).
	Flat Method = iota + 1
	// Recursive: the sha256 of the path's NAR serialisation
	// ("fixed:r:sha256:…": builtins.path, nix-store --add, recursive
	// fixed-output derivations).
	Recursive
	// Text: the sha256 of a single regular file's contents, which may
	// refer to other store paths ("text:sha256:…": builtins.toFile,
	// derivation files).
	Text
)

func (m Method) String() string {
	switch m {
	case Flat:
		return "flat"
	case Recursive:
		return "recursive"
	case Text:
		return "text"
	}
	return fmt.Sprintf("Method(%d)", int(m))
}

// CA is a parsed content address. Only sha256 is accepted: it is what
// every path a Nix store makes by default carries, and the only hash a
// NAR is checked with here.
type CA struct {
	Method Method
	Hash   [sha256.Size]byte
}

// Parse reads a content address as Nix prints it (narinfo CA field,
// nix path-info --json "ca"). The hash is nix32, or hex.
func Parse(s string) (CA, error) {
	var c CA
	rest, ok := strings.CutPrefix(s, "text:")
	switch {
	case ok:
		c.Method = Text
	default:
		rest, ok = strings.CutPrefix(s, "fixed:")
		if !ok {
			return c, fmt.Errorf("%w: %q: want text: or fixed:", ErrInvalid, s)
		}
		c.Method = Flat
		if r, ok := strings.CutPrefix(rest, "r:"); ok {
			c.Method, rest = Recursive, r
		}
	}
	algo, enc, ok := strings.Cut(rest, ":")
	if !ok {
		return c, fmt.Errorf("%w: %q: no hash algorithm", ErrInvalid, s)
	}
	if algo != "sha256" {
		return c, fmt.Errorf("%w: %q: hash algorithm %q is not supported (only sha256)", ErrInvalid, s, algo)
	}
	var d []byte
	var err error
	switch len(enc) {
	case nixbase32.EncodedLen(sha256.Size):
		d, err = nixbase32.DecodeString(enc)
	case hex.EncodedLen(sha256.Size):
		d, err = hex.DecodeString(enc)
	default:
		err = fmt.Errorf("%d characters", len(enc))
	}
	if err != nil || len(d) != sha256.Size {
		return c, fmt.Errorf("%w: %q: sha256 hash: %v", ErrInvalid, s, err)
	}
	copy(c.Hash[:], d)
	return c, nil
}

// String is the content address as Nix prints it (nix32 hash).
func (c CA) String() string {
	h := "sha256:" + nixbase32.EncodeToString(c.Hash[:])
	switch c.Method {
	case Text:
		return "text:" + h
	case Recursive:
		return "fixed:r:" + h
	default:
		return "fixed:" + h
	}
}

// StorePath computes the store path Nix gives content with this address,
// name and references (absolute store paths, in any order; self says the
// path refers to itself). Nix allows references only for recursive and
// text addresses, and a self reference only for recursive ones.
func (c CA) StorePath(storeDir, name string, refs []string, self bool) (string, error) {
	if err := storepath.CheckName(name); err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	for _, r := range refs {
		if !strings.HasPrefix(r, storeDir+"/") {
			return "", fmt.Errorf("%w: reference %q is not in %s", ErrInvalid, r, storeDir)
		}
	}
	refs = slices.Sorted(slices.Values(refs))
	refs = slices.Compact(refs)
	hashHex := "sha256:" + hex.EncodeToString(c.Hash[:])
	switch c.Method {
	case Text:
		if self {
			return "", fmt.Errorf("%w: a text path cannot refer to itself", ErrInvalid)
		}
		return makeStorePath(storeDir, makeType("text", refs, false), hashHex, name), nil
	case Recursive:
		return makeStorePath(storeDir, makeType("source", refs, self), hashHex, name), nil
	case Flat:
		if len(refs) > 0 || self {
			return "", fmt.Errorf("%w: a flat fixed-output path cannot have references", ErrInvalid)
		}
		inner := sha256.Sum256([]byte("fixed:out:" + hashHex + ":"))
		return makeStorePath(storeDir, "output:out", "sha256:"+hex.EncodeToString(inner[:]), name), nil
	}
	return "", fmt.Errorf("%w: unknown method %v", ErrInvalid, c.Method)
}

// Check reports whether storePath is the path this address computes with
// refs (which may include storePath itself, a self reference).
func (c CA) Check(storePath string, refs []string) error {
	dir, base := path.Split(storePath)
	dir = strings.TrimSuffix(dir, "/")
	if err := storepath.CheckBase(base); err != nil || dir == "" {
		return fmt.Errorf("%w: %q is not a store path", ErrInvalid, storePath)
	}
	name := storepath.Name(base)
	var others []string
	self := false
	for _, r := range refs {
		if r == storePath {
			self = true
			continue
		}
		others = append(others, r)
	}
	want, err := c.StorePath(dir, name, others, self)
	if err != nil {
		return err
	}
	if want != storePath {
		return fmt.Errorf("%w: %s with references %v computes %s, not %s", ErrPathMismatch, c, refs, want, storePath)
	}
	return nil
}

// makeType is Nix's makeType: the type, then each reference, then
// ":self" for a self reference.
func makeType(typ string, refs []string, self bool) string {
	var b strings.Builder
	b.WriteString(typ)
	for _, r := range refs {
		b.WriteString(":" + r)
	}
	if self {
		b.WriteString(":self")
	}
	return b.String()
}

// makeStorePath is Nix's makeStorePath: the sha256 of
// "<type>:<algo>:<hex>:<storeDir>:<name>", folded to 20 bytes, in nix32.
func makeStorePath(storeDir, typ, hashHex, name string) string {
	s := sha256.Sum256([]byte(typ + ":" + hashHex + ":" + storeDir + ":" + name))
	var folded [20]byte
	for i, b := range s {
		folded[i%20] ^= b
	}
	return storeDir + "/" + nixbase32.EncodeToString(folded[:]) + "-" + name
}
