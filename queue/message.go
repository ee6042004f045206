package queue

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"

	"codeberg.org/provenix/provenix/storepath"
)

// ResultVersion is the version of the Result wire format this package writes.
const ResultVersion = 1

// Result is what a builder publishes for one realised derivation. Only the
// bundle is signed: every other field is routing and convenience, and the
// pusher must check it against the verified Statement before trusting it.
type Result struct {
	Version int    `json:"version"`
	Tenant  string `json:"tenant"`
	// Builder is the builder id the Statement names (runDetails.builder.id).
	Builder string `json:"builder"`
	DrvPath string `json:"drvPath"`
	System  string `json:"system"`
	// Outputs lists every output of the derivation that was realised.
	Outputs []Output `json:"outputs"`
	// Sources are content-addressed store paths of the built closure that
	// the result does not attest as outputs: sources added by
	// builtins.path, nix-store --add or builtins.toFile, and fixed
	// outputs the builder did not build itself. They are sent with the
	// first derivation of the closure that needs them. Each has its CA, and the pusher
	// admits it by checking that the path is the one its content address
	// and references compute: it needs no quorum.
	Sources []Output `json:"sources,omitempty"`
	// Bundle is a Sigstore bundle (JSON) whose DSSE payload is an in-toto
	// Statement with one subject per output.
	Bundle json.RawMessage `json:"bundle"`
	// Closure, when set, is the staging key (ClosureKey) of a nix-store
	// --export of the derivation's closure: its .drv, the .drv files of its
	// inputs and their sources. Volunteers import it to rebuild the
	// derivation. Like every field but the bundle it is unsigned, and the
	// export is only as good as what the importer checks (nix.Import
	// admits content-addressed paths only).
	Closure string `json:"closure,omitempty"`
}

// Output is one realised output of a derivation.
type Output struct {
	Name string `json:"name"`
	Path string `json:"path"`
	// NarHash is the lowercase hex sha256 of the output's NAR serialisation.
	NarHash string `json:"narHash"`
	NarSize uint64 `json:"narSize"`
	// StagingKey names the NAR in the staging object store.
	StagingKey string `json:"stagingKey"`
	// NixSig, when the builder holds a Nix signing key, is its Nix
	// signature ("name:base64") over the output's narinfo fingerprint.
	// Unsigned by the bundle, it is checked against the policy's key for
	// the builder and against the fingerprint the pusher computes.
	NixSig string `json:"nixSig,omitempty"`
	// References are the store paths the output refers to, as the
	// builder's store registered them. For an input-addressed output they
	// repeat what the signed Statement says (the pusher reads the
	// Statement's); for a source they are what the content address is
	// computed over.
	References []string `json:"references,omitempty"`
	// CA is Nix's content address of the path ("fixed:r:sha256:<nix32>",
	// "fixed:sha256:…", "text:sha256:…"): set for a fixed-output
	// derivation's output and for every source. Unsigned, it proves
	// itself: the pusher recomputes the store path from it.
	CA string `json:"ca,omitempty"`
}

// MsgID identifies a result for JetStream's duplicate window: the same
// builder publishing the same outputs of the same derivation twice is one
// message. The NAR hashes are part of it, so a rebuild that came out
// different is a new message (and evidence), not a dropped duplicate.
func (r *Result) MsgID() string {
	h := sha256.New()
	for _, s := range []string{r.Tenant, r.Builder, r.DrvPath} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	for _, o := range r.Outputs {
		h.Write([]byte(o.Name + "\x00" + o.Path + "\x00" + o.NarHash + "\x00"))
	}
	for _, o := range r.Sources {
		h.Write([]byte("source\x00" + o.Path + "\x00" + o.NarHash + "\x00"))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// StagingKey is the content-addressed staging key of a NAR with the given
// hex sha256: identical NARs from several builders are staged once.
func StagingKey(narHashHex string) string { return "nar/" + narHashHex }

// ClosureKey is the staging key of the closure export of drvPath.
func ClosureKey(drvPath string) string { return closurePrefix + path.Base(drvPath) }

const closurePrefix = "closure/"

// validClosureKey accepts "closure/" followed by one name of safe
// characters (validKey's), the shape ClosureKey gives.
func validClosureKey(key string) error {
	name, ok := strings.CutPrefix(key, closurePrefix)
	if !ok || name == "" || name == "." || name == ".." || strings.Contains(name, "/") {
		return fmt.Errorf("%w: closure key %q is not %s<name>", ErrInvalidName, key, closurePrefix)
	}
	return validKey(key)
}

// Validate checks the fields' shapes. It does not check the bundle.
func (r *Result) Validate() error {
	if r.Version != ResultVersion {
		return fmt.Errorf("%w: version %d, want %d", ErrMalformed, r.Version, ResultVersion)
	}
	if err := ValidToken(r.Tenant); err != nil {
		return fmt.Errorf("%w: tenant: %w", ErrMalformed, err)
	}
	if err := ValidToken(r.System); err != nil {
		return fmt.Errorf("%w: system: %w", ErrMalformed, err)
	}
	if r.Builder == "" {
		return fmt.Errorf("%w: no builder", ErrMalformed)
	}
	if err := storepath.Check(r.DrvPath); err != nil || !strings.HasSuffix(r.DrvPath, ".drv") {
		return fmt.Errorf("%w: drvPath %q is not a .drv store path", ErrMalformed, r.DrvPath)
	}
	if len(r.Outputs) == 0 {
		return fmt.Errorf("%w: no outputs", ErrMalformed)
	}
	seen := make(map[string]bool, len(r.Outputs))
	for i, o := range r.Outputs {
		if o.Name == "" || seen[o.Name] {
			return fmt.Errorf("%w: output %d: empty or repeated name %q", ErrMalformed, i, o.Name)
		}
		seen[o.Name] = true
		if err := validOutputShape(o); err != nil {
			return fmt.Errorf("%w: output %q: %w", ErrMalformed, o.Name, err)
		}
	}
	srcSeen := make(map[string]bool, len(r.Sources))
	for i, o := range r.Sources {
		if o.CA == "" {
			return fmt.Errorf("%w: source %d (%q): no content address", ErrMalformed, i, o.Path)
		}
		if err := validOutputShape(o); err != nil {
			return fmt.Errorf("%w: source %d: %w", ErrMalformed, i, err)
		}
		if srcSeen[o.Path] {
			return fmt.Errorf("%w: source %q repeated", ErrMalformed, o.Path)
		}
		srcSeen[o.Path] = true
	}
	// A JSON null is no bundle either: encoding/json hands it to a
	// RawMessage as the four bytes "null".
	if len(r.Bundle) == 0 || string(bytes.TrimSpace(r.Bundle)) == "null" {
		return fmt.Errorf("%w: no bundle", ErrMalformed)
	}
	if r.Closure != "" {
		if err := validClosureKey(r.Closure); err != nil {
			return fmt.Errorf("%w: %w", ErrMalformed, err)
		}
	}
	return nil
}

// Encode validates r and returns its wire form.
func (r *Result) Encode() ([]byte, error) {
	return encodeMessage(r, "result", MaxResultSize)
}

// DecodeResult parses and validates a result message. Unknown fields and
// trailing data are refused: a field this version does not know could
// carry meaning the pusher would silently ignore.
func DecodeResult(data []byte) (*Result, error) {
	return decodeMessage[Result](data, "result", MaxResultSize)
}

// validOutputShape checks the fields an output and a source share.
func validOutputShape(o Output) error {
	if err := storepath.Check(o.Path); err != nil {
		return err
	}
	if b, err := hex.DecodeString(o.NarHash); err != nil || len(b) != sha256.Size || strings.ToLower(o.NarHash) != o.NarHash {
		return fmt.Errorf("narHash %q is not lowercase hex sha256", o.NarHash)
	}
	if o.StagingKey == "" {
		return errors.New("no staging key")
	}
	if len(o.NixSig) > 512 || strings.ContainsAny(o.NixSig, " \n\r\t") {
		return errors.New("malformed nix signature")
	}
	if len(o.CA) > 256 || strings.ContainsAny(o.CA, " \n\r\t") {
		return errors.New("malformed content address")
	}
	for _, ref := range o.References {
		if err := storepath.Check(ref); err != nil {
			return fmt.Errorf("reference: %w", err)
		}
	}
	return nil
}
