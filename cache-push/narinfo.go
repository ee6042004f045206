package cachepush

import (
	"crypto/rand"
	"fmt"
	"path"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cache-push/ingest"
)

// maxNarinfoSize bounds how much of an existing narinfo is read.
const maxNarinfoSize = 1 << 20

// newNarinfo describes out, stored as nar, signed by key. Every field
// comes from the verified Statement or from the bytes just ingested.
func newNarinfo(out attest.Output, deriver string, nar ingest.Result, key signature.SecretKey, ca string) (*narinfo.NarInfo, error) {
	ni := &narinfo.NarInfo{
		StorePath:   out.Path,
		URL:         nar.URL,
		Compression: "zstd",
		FileHash:    nixhash.MustNewHashWithEncoding(nixhash.SHA256, nar.FileHash[:], nixhash.NixBase32, true),
		FileSize:    nar.FileSize,
		NarHash:     nixhash.MustNewHashWithEncoding(nixhash.SHA256, nar.NarHash[:], nixhash.NixBase32, true),
		NarSize:     nar.NarSize,
		CA:          ca,
	}
	if deriver != "" {
		ni.Deriver = path.Base(deriver)
	}
	for _, r := range out.References {
		ni.References = append(ni.References, path.Base(r))
	}
	if err := ni.Check(); err != nil {
		return nil, fmt.Errorf("narinfo for %s: %w", out.Path, err)
	}
	sig, err := key.Sign(rand.Reader, ni.Fingerprint())
	if err != nil {
		return nil, fmt.Errorf("sign narinfo for %s: %w", out.Path, err)
	}
	ni.Signatures = append(ni.Signatures, sig)
	return ni, nil
}

// narHashOf returns the NarHash of a narinfo as raw bytes.
func narHashOf(ni *narinfo.NarInfo) ([32]byte, error) {
	var h [32]byte
	if ni.NarHash == nil || len(ni.NarHash.Digest()) != 32 {
		return h, fmt.Errorf("narinfo %s has no sha256 NarHash", ni.StorePath)
	}
	copy(h[:], ni.NarHash.Digest())
	return h, nil
}
