package nix

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"
)

// ErrInvalidPath means a store path asked about is not valid in the store.
var ErrInvalidPath = errors.New("nix: not a valid store path")

// ErrPathInfoFormat means `nix path-info --json` printed something none of
// the known shapes describes.
var ErrPathInfoFormat = errors.New("nix: unrecognised nix path-info --json output")

// PathInfos reads what the store records of valid paths (`nix path-info
// --json`), in the order asked; with no paths, of every valid path (--all),
// sorted by path. Unlike PathInfo it fills Registered, Ultimate, CA and
// Signatures. Paths must not be .drv files: older Nix answers for a
// derivation's outputs instead (use PathInfo or Invalid for a .drv). A
// path that is not valid fails with ErrInvalidPath.
func (n *Nix) PathInfos(ctx context.Context, paths ...string) ([]PathInfo, error) {
	v, err := n.Version(ctx)
	if err != nil {
		return nil, err
	}
	args := []string{"--extra-experimental-features", "nix-command", "path-info", "--json"}
	if v.hasJSONFormat() {
		// Without it 2.33+ warns and prints the object form; format 2 is
		// the one it documents as current.
		args = append(args, "--json-format", "2")
	}
	if len(paths) == 0 {
		args = append(args, "--all")
	} else {
		args = append(args, "--")
		args = append(args, paths...)
	}
	out, err := n.run(ctx, "nix", n.args(args...)...)
	if err != nil {
		return nil, err
	}
	byPath, err := ParsePathInfoJSON(out)
	if err != nil {
		return nil, err
	}
	if len(paths) == 0 {
		infos := make([]PathInfo, 0, len(byPath))
		for p, pi := range byPath {
			if pi == nil {
				return nil, fmt.Errorf("%w: %s (listed by --all)", ErrInvalidPath, p)
			}
			infos = append(infos, *pi)
		}
		sort.Slice(infos, func(a, b int) bool { return infos[a].Path < infos[b].Path })
		return infos, nil
	}
	infos := make([]PathInfo, 0, len(paths))
	for _, p := range paths {
		pi, ok := byPath[p]
		if !ok {
			return nil, fmt.Errorf("nix path-info --json: no answer for %s", p)
		}
		if pi == nil {
			return nil, fmt.Errorf("%w: %s", ErrInvalidPath, p)
		}
		infos = append(infos, *pi)
	}
	return infos, nil
}

// pathInfoJSON is one store object as every shape of `nix path-info
// --json` prints it; the fields whose types differ between shapes are
// read raw.
type pathInfoJSON struct {
	Path             string            `json:"path"` // array shape only
	Valid            *bool             `json:"valid"`
	NarHash          string            `json:"narHash"`
	NarSize          uint64            `json:"narSize"`
	References       []string          `json:"references"`
	Deriver          *string           `json:"deriver"`
	RegistrationTime *int64            `json:"registrationTime"`
	Ultimate         bool              `json:"ultimate"`
	CA               json.RawMessage   `json:"ca"`
	Signatures       []json.RawMessage `json:"signatures"`
}

// ParsePathInfoJSON reads `nix path-info --json` output in each shape Nix
// has printed, keyed by absolute store path; a path Nix reports as invalid
// maps to nil:
//   - Nix ≤ 2.18 and Lix: an array of objects with "path" (invalid paths
//     have "valid": false);
//   - Nix 2.19 to 2.32 (and 2.33+ with --json-format 1): an object keyed
//     by absolute store path, invalid paths null;
//   - Nix 2.33+ with --json-format 2 (or 3): {"version", "storeDir",
//     "info"}, keyed by store path base name, with base-name references
//     and deriver and a structured content address, which is turned back
//     into Nix's string form ("fixed:r:sha256:<nix32>").
func ParsePathInfoJSON(out []byte) (map[string]*PathInfo, error) {
	out = bytes.TrimSpace(out)
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrPathInfoFormat)
	}
	res := make(map[string]*PathInfo)
	switch out[0] {
	case '[':
		var arr []pathInfoJSON
		if err := json.Unmarshal(out, &arr); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrPathInfoFormat, err)
		}
		for _, o := range arr {
			if !strings.HasPrefix(o.Path, "/") {
				return nil, fmt.Errorf("%w: entry without an absolute path (%q)", ErrPathInfoFormat, o.Path)
			}
			if o.Valid != nil && !*o.Valid {
				res[o.Path] = nil
				continue
			}
			pi, err := o.toPathInfo(o.Path, "")
			if err != nil {
				return nil, err
			}
			res[o.Path] = pi
		}
		return res, nil
	case '{':
	default:
		return nil, fmt.Errorf("%w: starts with %q", ErrPathInfoFormat, out[0])
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(out, &obj); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPathInfoFormat, err)
	}
	storeDir := ""
	if info, ok := obj["info"]; ok {
		// The versioned form: its keys are not store paths.
		var hdr struct {
			Version  int    `json:"version"`
			StoreDir string `json:"storeDir"`
		}
		if err := json.Unmarshal(out, &hdr); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrPathInfoFormat, err)
		}
		if hdr.Version < 2 || !strings.HasPrefix(hdr.StoreDir, "/") {
			return nil, fmt.Errorf("%w: version %d, storeDir %q", ErrPathInfoFormat, hdr.Version, hdr.StoreDir)
		}
		storeDir = strings.TrimRight(hdr.StoreDir, "/")
		obj = nil
		if err := json.Unmarshal(info, &obj); err != nil {
			return nil, fmt.Errorf("%w: info: %w", ErrPathInfoFormat, err)
		}
	}
	for key, raw := range obj {
		p := key
		if storeDir != "" {
			if strings.Contains(key, "/") {
				return nil, fmt.Errorf("%w: key %q is not a base name", ErrPathInfoFormat, key)
			}
			p = storeDir + "/" + key
		} else if !strings.HasPrefix(key, "/") {
			return nil, fmt.Errorf("%w: key %q is not a store path", ErrPathInfoFormat, key)
		}
		if bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
			res[p] = nil
			continue
		}
		var o pathInfoJSON
		if err := json.Unmarshal(raw, &o); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrPathInfoFormat, p, err)
		}
		pi, err := o.toPathInfo(p, storeDir)
		if err != nil {
			return nil, err
		}
		res[p] = pi
	}
	return res, nil
}

// toPathInfo converts one object; storeDir is set when its references and
// deriver are base names.
func (o *pathInfoJSON) toPathInfo(p, storeDir string) (*PathInfo, error) {
	abs := func(s string) string {
		if storeDir != "" && !strings.HasPrefix(s, "/") {
			return storeDir + "/" + s
		}
		return s
	}
	pi := &PathInfo{Path: p, NarSize: o.NarSize, Ultimate: o.Ultimate}
	h, err := parseNarHash(o.NarHash)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrPathInfoFormat, p, err)
	}
	pi.NarHash = h
	for _, r := range o.References {
		pi.References = append(pi.References, abs(r))
	}
	if o.Deriver != nil && *o.Deriver != "" {
		pi.Deriver = abs(*o.Deriver)
	}
	if o.RegistrationTime != nil {
		pi.Registered = time.Unix(*o.RegistrationTime, 0)
	}
	if pi.CA, err = parseCA(o.CA); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrPathInfoFormat, p, err)
	}
	for _, s := range o.Signatures {
		sig, err := parseSignature(s)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrPathInfoFormat, p, err)
		}
		pi.Signatures = append(pi.Signatures, sig)
	}
	return pi, nil
}

// parseNarHash reads a sha256 as Nix prints NAR hashes: SRI
// ("sha256-<base64>") or "sha256:<nix32>" (or bare hex from the database).
func parseNarHash(s string) ([32]byte, error) {
	var sum [32]byte
	if !strings.Contains(s, ":") && !strings.Contains(s, "-") {
		s = "sha256:" + s
	}
	h, err := nixhash.ParseAny(s, nil)
	if err != nil {
		return sum, fmt.Errorf("NAR hash %q: %w", s, err)
	}
	if len(h.Digest()) != len(sum) {
		return sum, fmt.Errorf("NAR hash %q is not a sha256", s)
	}
	copy(sum[:], h.Digest())
	return sum, nil
}

// parseCA returns Nix's string form of a content address: as is when Nix
// printed a string, converted when it printed {"method", "hash"} (JSON
// format 2): method "nar" is "fixed:r:", "flat" "fixed:", "git"
// "fixed:git:", "text" "text:", each followed by the algorithm and the
// nix32 digest.
func parseCA(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return "", nil
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", fmt.Errorf("ca: %w", err)
		}
		return s, nil
	}
	var ca struct {
		Method string `json:"method"`
		Hash   string `json:"hash"`
	}
	if err := json.Unmarshal(raw, &ca); err != nil {
		return "", fmt.Errorf("ca: %w", err)
	}
	prefix, ok := map[string]string{"nar": "fixed:r:", "flat": "fixed:", "git": "fixed:git:", "text": "text:"}[ca.Method]
	if !ok {
		return "", fmt.Errorf("ca: unknown method %q", ca.Method)
	}
	h, err := nixhash.ParseAny(ca.Hash, nil)
	if err != nil {
		return "", fmt.Errorf("ca: hash %q: %w", ca.Hash, err)
	}
	return prefix + h.Algo().String() + ":" + nixbase32.EncodeToString(h.Digest()), nil
}

// parseSignature accepts a signature as a string ("name:base64") or as
// {"keyName", "sig"} (JSON format 3).
func parseSignature(raw json.RawMessage) (string, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var o struct {
		KeyName string `json:"keyName"`
		Sig     string `json:"sig"`
	}
	if err := json.Unmarshal(raw, &o); err != nil || o.KeyName == "" {
		return "", fmt.Errorf("signature %s: want \"name:sig\" or {keyName, sig}", raw)
	}
	return o.KeyName + ":" + o.Sig, nil
}

// BuiltSince lists the valid paths with a deriver that this store built
// (Nix marks them "ultimate"; substituted and added paths are not) and
// registered at or after since, truncated to the second as Nix keeps it.
// It reads every path's metadata: cost grows with the store, not the job.
func (n *Nix) BuiltSince(ctx context.Context, since time.Time) ([]PathInfo, error) {
	all, err := n.PathInfos(ctx)
	if err != nil {
		return nil, err
	}
	cut := since.Unix()
	var built []PathInfo
	for _, pi := range all {
		if pi.Ultimate && pi.Deriver != "" && pi.Registered.Unix() >= cut && !strings.HasSuffix(pi.Path, ".drv") {
			built = append(built, pi)
		}
	}
	return built, nil
}
