// Package cachelayout names the objects of a Provenix binary cache and
// holds the one format of its own, the provenance sidecar
// (docs/cache-layout.md):
//
//	nix-cache-info             the cache's parameters (CacheInfo)
//	<hash>.narinfo             a store path's narinfo (NarinfoKey)
//	<hash>.provenance.json     its provenance sidecar (ProvenanceKey)
//	<hash>.vsa.json            its verification summary (VSAKey)
//	nar/<filehash>.nar.zst     its compressed NAR (NARKey)
//	provenix/policy.json       the policy the pusher applies (PolicyKey)
//	provenix/verifier.json     who signs the verification summaries (VerifierKey)
//	provenix/vsa.pub           the key they are signed with, for cosign (VSAPublicKeyKey)
//	oci/<hash>.json            its OCI layer record (OCILayerKey)
//	oci/tags/<repo>/<tag>.json an operator's OCI tag (OCITagKey)
//	oci/vsa/<hex>.json         an OCI image's VSA bundle (OCIVSAKey)
//
// <hash> is the 32-character hash part of the store path. The writer
// (cache-push), the reader (cacheclient), the server, gc, the workflow
// action and the commands all spell these names through this package,
// which depends on nothing but the standard library so that any of them
// can import it.
package cachelayout

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
)

// Object names and the parts keys are made of.
const (
	// CacheInfoKey is the cache's nix-cache-info.
	CacheInfoKey = "nix-cache-info"
	// NarinfoSuffix ends a narinfo key, after the hash part.
	NarinfoSuffix = ".narinfo"
	// ProvenanceSuffix ends a provenance sidecar key.
	ProvenanceSuffix = ".provenance.json"
	// VSASuffix ends a verification summary key: a Sigstore bundle of an
	// SLSA verification summary the pusher signed when it published the
	// path (package vsa).
	VSASuffix = ".vsa.json"
	// PolicyKey is the published policy (PolicyDocument) that every
	// verification summary of the cache names by digest.
	PolicyKey = "provenix/policy.json"
	// VerifierKey is the VerifierDocument: the verifier id and key (or
	// keyless identity) of the cache's verification summaries, signed by
	// the cache's Nix key.
	VerifierKey = "provenix/verifier.json"
	// VSAPublicKeyKey is the PEM public key verification summaries are
	// signed with (the VerifierDocument's), as cosign's --key takes it.
	VSAPublicKeyKey = "provenix/vsa.pub"
	// NARPrefix starts every NAR key.
	NARPrefix = "nar/"
	// NARSuffix ends the NAR keys the pusher writes (zstd).
	NARSuffix = ".nar.zst"
	// HashLen is the length of a store path's hash part, which starts
	// narinfo and sidecar keys.
	HashLen = 32
	// ChunkPrefix starts the keys of a chunked store's chunks
	// (store/chunked): "chunks/<2 hex>/<64 hex sha256>". No other object
	// of the cache uses it.
	ChunkPrefix = "chunks/"
)

// NARSuffixes are the NAR file endings a cache may serve (stock caches
// serve xz, or uncompressed NARs), the pusher's own first.
func NARSuffixes() []string { return []string{NARSuffix, ".nar.xz", ".nar"} }

// hashPart is the hash part of a store path or of its base name; callers
// pass paths storepath.Check accepted.
func hashPart(storePath string) string { return path.Base(storePath)[:HashLen] }

// NarinfoKey is the cache key of a store path's narinfo.
func NarinfoKey(storePath string) string { return hashPart(storePath) + NarinfoSuffix }

// ProvenanceKey is the cache key of a store path's provenance sidecar.
func ProvenanceKey(storePath string) string { return hashPart(storePath) + ProvenanceSuffix }

// VSAKey is the cache key of a store path's verification summary.
func VSAKey(storePath string) string { return hashPart(storePath) + VSASuffix }

// URL is key under a cache's public URL base, or key alone (a URI
// reference relative to the cache) when the URL is not known: how
// verification summaries name the cache's objects.
func URL(base, key string) string {
	if base == "" {
		return key
	}
	return strings.TrimSuffix(base, "/") + "/" + key
}

// VerifierDocumentVersion is the verifier document's format version.
const VerifierDocumentVersion = 1

// VerifierDocument, under VerifierKey, says who signs the cache's
// verification summaries: a verifier id with a public key, or with a
// keyless identity (a Fulcio certificate's OIDC issuer and subject).
// Signatures are Nix signatures ("name:base64") by the cache's Nix key
// over Fingerprint, so a client that trusts the cache key (as its Nix
// does, in trusted-public-keys) can trust the verifier without being told
// its key separately.
type VerifierDocument struct {
	Version    int    `json:"version"`
	VerifierID string `json:"verifierId"`
	// PublicKey is the PEM key (empty for a keyless verifier).
	PublicKey string `json:"publicKey,omitempty"`
	// Issuer and SAN identify a keyless verifier's certificates.
	Issuer     string   `json:"issuer,omitempty"`
	SAN        string   `json:"san,omitempty"`
	Signatures []string `json:"signatures"`
}

// Fingerprint is what the cache's Nix key signs: a fixed prefix (no
// narinfo fingerprint, which starts "1;", can be one), the verifier id and
// the sha256 of its key or identity.
func (d *VerifierDocument) Fingerprint() string {
	h := sha256.New()
	for _, f := range []string{d.PublicKey, d.Issuer, d.SAN} {
		h.Write([]byte(strconv.Itoa(len(f)) + ":" + f + ";"))
	}
	return "provenix-verifier;1;" + d.VerifierID + ";sha256:" + hex.EncodeToString(h.Sum(nil))
}

// PolicyDocumentVersion is the published policy's format version.
const PolicyDocumentVersion = 1

// PolicyDocument is the policy a pusher publishes under PolicyKey: the
// policy file as it loaded it, and the builder keys that file names by
// path, so the document's digest pins whom the policy trusts.
type PolicyDocument struct {
	Version int `json:"version"`
	// Policy is the policy file's text (YAML).
	Policy string `json:"policy"`
	// Keys are the builders' public keys (PEM) by builder id.
	Keys map[string]string `json:"keys,omitempty"`
}

// NARKey is the cache key (and narinfo URL) of a zstd-compressed NAR
// whose file hash, the nix32 sha256 of the compressed file, is fileHash.
func NARKey(fileHash string) string { return NARPrefix + fileHash + NARSuffix }

// OCI registry objects (package oci): written by the cache server and
// `provenix oci tag`, never by the pusher, and never served by the Nix
// cache routes.
const (
	// OCIPrefix starts every key of the OCI front-end.
	OCIPrefix = "oci/"
	// OCITagPrefix starts the keys of operator-set tags.
	OCITagPrefix = OCIPrefix + "tags/"
	// OCIVSAPrefix starts the keys of image VSAs.
	OCIVSAPrefix = OCIPrefix + "vsa/"
)

// OCILayerKey is the key of the layer record of a store path: the digest
// and size of its tar layer, computed once from its NAR.
func OCILayerKey(storePath string) string { return OCIPrefix + hashPart(storePath) + ".json" }

// OCITagKey is the key of the tag tag of repository repo, both valid by
// the distribution spec. A repository's "/" becomes "+" (which no
// repository name holds), so that one repository's key is never a
// directory-prefix of another's.
func OCITagKey(repo, tag string) string { return OCITagRepoPrefix(repo) + tag + ".json" }

// OCITagRepoPrefix starts the keys of every tag of repo.
func OCITagRepoPrefix(repo string) string {
	return OCITagPrefix + strings.ReplaceAll(repo, "/", "+") + "/"
}

// OCIVSAKey is the key of the VSA bundle of the image whose manifest has
// the lowercase hex sha256 manifestHex.
func OCIVSAKey(manifestHex string) string { return OCIVSAPrefix + manifestHex + ".json" }

// DefaultPriority is the Priority advertised in a generated nix-cache-info;
// it matches cache.nixos.org, so by default neither cache is preferred.
const DefaultPriority = 40

// CacheInfo is the nix-cache-info of a cache of the given priority (lower
// is preferred by Nix; 0 means DefaultPriority).
func CacheInfo(priority int) string {
	if priority == 0 {
		priority = DefaultPriority
	}
	return "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: " + strconv.Itoa(priority) + "\n"
}

// ProvenanceVersion is the sidecar format version.
const ProvenanceVersion = 1

// ErrProvenance is the root of every refusal of a sidecar.
var ErrProvenance = errors.New("provenance sidecar")

// Provenance is the sidecar stored under ProvenanceKey next to a
// narinfo: every bundle that attests the path's NAR.
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

// QuorumInfo is how the sidecar says a path came to be published.
type QuorumInfo struct {
	Verdict  string   `json:"verdict"`
	Min      int      `json:"min"`
	Distinct string   `json:"distinct"`
	Agreeing []string `json:"agreeing"`
	// UnverifiedByQuorum: published from a designated trusted builder
	// while builders disagreed (on_disagreement: trusted-only).
	UnverifiedByQuorum bool `json:"unverifiedByQuorum,omitempty"`
}

// DecodeProvenance reads a sidecar of ProvenanceVersion without checking
// its fields: enough for a reader that checks each bundle against the NAR
// it has (cacheclient). Errors match ErrProvenance.
func DecodeProvenance(b []byte) (*Provenance, error) {
	var p Provenance
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrProvenance, err)
	}
	if p.Version != ProvenanceVersion {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrProvenance, p.Version, ProvenanceVersion)
	}
	return &p, nil
}

// ParseProvenance reads a sidecar and checks its shape, as the writer
// does before it adds to one: a lowercase hex sha256 and at least one
// bundle. Errors match ErrProvenance.
func ParseProvenance(b []byte) (*Provenance, error) {
	p, err := DecodeProvenance(b)
	if err != nil {
		return nil, err
	}
	if d, err := hex.DecodeString(p.NarSHA256); err != nil || len(d) != 32 || strings.ToLower(p.NarSHA256) != p.NarSHA256 {
		return nil, fmt.Errorf("%w: narSha256 %q is not lowercase hex sha256", ErrProvenance, p.NarSHA256)
	}
	if len(p.Bundles) == 0 {
		return nil, fmt.Errorf("%w: no bundles", ErrProvenance)
	}
	return p, nil
}
