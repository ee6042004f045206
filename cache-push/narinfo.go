package cachepush

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cache-push/ingest"
)

// maxNarinfoSize bounds how much of an existing narinfo is read.
const maxNarinfoSize = 1 << 20

// hashPart is the 32-character hash of a store path, the cache key stem.
func hashPart(storePath string) string {
	return path.Base(storePath)[:32]
}

// NarinfoKey is the cache key of a store path's narinfo.
func NarinfoKey(storePath string) string { return hashPart(storePath) + ".narinfo" }

// ProvenanceKey is the cache key of a store path's provenance sidecar.
func ProvenanceKey(storePath string) string { return hashPart(storePath) + ".provenance.json" }

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

// Provenance is the sidecar stored as <hash>.provenance.json next to a
// narinfo: every bundle that attests the path's NAR. Its format is
// documented in docs/cache-layout.md.
type Provenance struct {
	Version   int    `json:"version"`
	StorePath string `json:"storePath"`
	// NarSHA256 is the lowercase hex sha256 of the NAR, the digest every
	// bundle's subject for StorePath carries.
	NarSHA256 string            `json:"narSha256"`
	Bundles   []json.RawMessage `json:"bundles"`
	// Quorum, when a quorum decided, says how: the verdict, the rule and
	// the agreeing builders; unverifiedByQuorum marks a trusted-only entry.
	Quorum *QuorumInfo `json:"quorum,omitempty"`
}

// ProvenanceVersion is the sidecar format version.
const ProvenanceVersion = 1

// ParseProvenance reads a sidecar and checks its shape.
func ParseProvenance(b []byte) (*Provenance, error) {
	var p Provenance
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("provenance sidecar: %w", err)
	}
	if p.Version != ProvenanceVersion {
		return nil, fmt.Errorf("provenance sidecar: version %d, want %d", p.Version, ProvenanceVersion)
	}
	if d, err := hex.DecodeString(p.NarSHA256); err != nil || len(d) != 32 || strings.ToLower(p.NarSHA256) != p.NarSHA256 {
		return nil, fmt.Errorf("provenance sidecar: narSha256 %q is not lowercase hex sha256", p.NarSHA256)
	}
	if len(p.Bundles) == 0 {
		return nil, fmt.Errorf("provenance sidecar: no bundles")
	}
	return &p, nil
}
