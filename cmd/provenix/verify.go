package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/spf13/cobra"

	"codeberg.org/provenix/provenix/attest"
	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/nix"
)

type verifyFlags struct {
	json      bool
	cache     string
	bundle    string
	storePath string
	storeRoot string
	keys      []string
	builderID string
	policy    string
	ids       []string
	trustRoot string
	reqSCT    bool
	reqTlog   bool
	cacheKey  string
	quorum    int
}

func newVerifyCmd(g *globals) *cobra.Command {
	f := &verifyFlags{}
	cmd := &cobra.Command{
		Use:   "verify [flags] TARGET",
		Short: "Verify the provenance of a store path, a NAR file or a cache entry",
		Long: `Check that signed provenance from trusted builders attests exactly the bytes
at hand: every bundle's signature against the trusted keys, its subject (store
path and NAR sha256) against the actual NAR, its predicate type, build type
and builder id. Then print who built it, from what, when, and the verdict.

TARGET is one of:
  --cache URL STOREPATH     fetch narinfo, provenance and NAR from a binary cache
  STOREPATH                 a path in the local store (bundle from --bundle or --cache)
  FILE.nar --bundle B --store-path P

Trust comes from --key FILE (with --builder-id), keyless --identity
ID=ISSUER,SAN with --trusted-root, or --policy FILE; with none of them, the
data directory's policy.yaml. --require-tlog also demands that key-signed
bundles carry an entry from a transparency log in --trusted-root (or in the
policy's trusted_root), e.g. a Rekor v2 (rekor-tiles) log.

Exit status: 0 verified, 1 not verified, 2 usage or I/O error.`,
		Example: `  provenix verify --cache http://127.0.0.1:8080 --key builder.pub /nix/store/...-hello
  provenix verify --bundle hello.bundle.json --key builder.pub /nix/store/...-hello
  provenix verify --json --policy policy.yaml --bundle b.json --store-path /nix/store/...-hello hello.nar`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rep, err := runVerify(cmd.Context(), g, f, args[0])
			if err != nil {
				return err
			}
			if f.json {
				if err := writeJSON(g, rep); err != nil {
					return err
				}
			} else {
				printReport(g, rep)
			}
			if !rep.Verified {
				return &exitError{code: exitFailed, err: errors.New("not verified: " + rep.Reason)}
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&f.json, "json", false, "print the report as JSON")
	fl.StringVar(&f.cache, "cache", "", "binary cache base URL to fetch narinfo, provenance and NAR from")
	fl.StringVar(&f.bundle, "bundle", "", "Sigstore bundle file (instead of the cache's provenance)")
	fl.StringVar(&f.storePath, "store-path", "", "store path a NAR file holds")
	fl.StringVar(&f.storeRoot, "store", "", "chroot store root holding STOREPATH")
	fl.StringArrayVar(&f.keys, "key", nil, "trusted builder public key file (PEM), bound to --builder-id; or ID=FILE")
	fl.StringVar(&f.builderID, "builder-id", "local", "builder id the --key files are trusted for")
	fl.StringVar(&f.policy, "policy", "", "policy file whose builders are trusted")
	fl.StringArrayVar(&f.ids, "identity", nil, "trusted keyless builder: ID=ISSUER,SAN (Fulcio certificate identity; prefix ISSUER or SAN with ~ for a regular expression); needs --trusted-root")
	fl.StringVar(&f.trustRoot, "trusted-root", "", "Sigstore trusted_root.json (Fulcio CA, Rekor and CT logs) for --identity and --require-tlog")
	fl.BoolVar(&f.reqTlog, "require-tlog", false, "key-signed bundles must also carry an entry from a transparency log in --trusted-root")
	fl.BoolVar(&f.reqSCT, "require-sct", false, "with --identity, also require a certificate transparency timestamp")
	fl.StringVar(&f.cacheKey, "cache-key", "", "also require the narinfo to be signed by this Nix cache public key (NAME:BASE64 or a file)")
	fl.IntVar(&f.quorum, "quorum", 1, "require this many distinct trusted builders to attest the NAR")
	return cmd
}

// report is what verify found.
type report struct {
	StorePath    string        `json:"storePath"`
	NarSHA256    string        `json:"narSha256"`
	NarSize      uint64        `json:"narSize"`
	From         string        `json:"from"`
	Verified     bool          `json:"verified"`
	Verdict      string        `json:"verdict"`
	Reason       string        `json:"reason,omitempty"`
	Quorum       int           `json:"quorum"`
	NarinfoSig   string        `json:"narinfoSignature,omitempty"`
	Attestations []attestation `json:"attestations"`
}

type attestation struct {
	Verified    bool           `json:"verified"`
	Error       string         `json:"error,omitempty"`
	Builder     string         `json:"builder,omitempty"`
	KeyID       string         `json:"keyId,omitempty"`
	Derivation  string         `json:"derivation,omitempty"`
	System      string         `json:"system,omitempty"`
	Installable map[string]any `json:"installable,omitempty"`
	Source      map[string]any `json:"source,omitempty"`
	Workflow    map[string]any `json:"workflow,omitempty"`
	NixVersion  string         `json:"nixVersion,omitempty"`
	StartedOn   *time.Time     `json:"startedOn,omitempty"`
	FinishedOn  *time.Time     `json:"finishedOn,omitempty"`
	Invocation  string         `json:"invocationId,omitempty"`
}

func (f *verifyFlags) verifier(g *globals) (*attest.Verifier, error) {
	var tb []attest.TrustedBuilder
	for _, k := range f.keys {
		id, file := f.builderID, k
		if i, p, ok := strings.Cut(k, "="); ok {
			id, file = i, p
		}
		pub, err := attest.LoadPublicKeyFile(file)
		if err != nil {
			return nil, usageError("--key: %v", err)
		}
		tb = append(tb, attest.TrustedBuilder{ID: id, PublicKey: pub})
	}
	var ids []attest.TrustedIdentity
	for _, spec := range f.ids {
		id, rest, ok1 := strings.Cut(spec, "=")
		iss, san, ok2 := strings.Cut(rest, ",")
		if !ok1 || !ok2 || id == "" || iss == "" || san == "" {
			return nil, usageError("--identity %q: want ID=ISSUER,SAN", spec)
		}
		ti := attest.TrustedIdentity{ID: id, Issuer: iss, SAN: san}
		if r, ok := strings.CutPrefix(iss, "~"); ok {
			ti.Issuer, ti.IssuerRegexp = "", r
		}
		if r, ok := strings.CutPrefix(san, "~"); ok {
			ti.SAN, ti.SANRegexp = "", r
		}
		ids = append(ids, ti)
	}
	polPath := f.policy
	if polPath == "" && len(tb) == 0 && len(ids) == 0 {
		polPath = g.paths().Policy()
		if _, err := os.Stat(polPath); err != nil {
			return nil, usageError("no trusted builders: pass --key FILE (and --builder-id) or --policy FILE")
		}
	}
	if polPath != "" {
		pol, err := policy.Load(polPath)
		if err != nil {
			return nil, usageError("%v", err)
		}
		if f.reqTlog {
			// The flag tightens a policy; the log comes from its trusted_root,
			// or from --trusted-root.
			pol.RequireTlog = true
			if f.trustRoot != "" {
				tr, err := root.NewTrustedRootFromPath(f.trustRoot)
				if err != nil {
					return nil, usageError("--trusted-root: %v", err)
				}
				return pol.VerifierWith(tr)
			}
		}
		return pol.Verifier()
	}
	v, err := attest.NewVerifier(tb)
	if err != nil {
		return nil, usageError("%v", err)
	}
	if (len(ids) > 0 || f.reqTlog) && f.trustRoot == "" {
		if f.reqTlog {
			return nil, usageError("--require-tlog needs --trusted-root (a trusted_root.json listing the transparency log)")
		}
		return nil, usageError("--identity needs --trusted-root (the private Sigstore's trusted_root.json)")
	}
	if len(ids) > 0 || f.reqTlog {
		tr, err := root.NewTrustedRootFromPath(f.trustRoot)
		if err != nil {
			return nil, usageError("--trusted-root: %v", err)
		}
		if len(ids) > 0 {
			if err := v.WithIdentities(tr, ids, f.reqSCT); err != nil {
				return nil, usageError("%v", err)
			}
		}
		if f.reqTlog {
			if err := v.RequireTlog(tr); err != nil {
				return nil, usageError("%v", err)
			}
		}
	}
	return v, nil
}

func runVerify(ctx context.Context, g *globals, f *verifyFlags, target string) (*report, error) {
	if f.quorum < 1 {
		return nil, usageError("--quorum must be at least 1")
	}
	if f.policy != "" && len(f.keys) > 0 {
		return nil, usageError("give --key or --policy, not both")
	}
	v, err := f.verifier(g)
	if err != nil {
		return nil, err
	}
	rep := &report{Quorum: f.quorum}
	var bundles [][]byte
	var narHash [32]byte

	switch {
	case f.cache != "":
		if !strings.HasPrefix(target, "/") {
			return nil, usageError("with --cache, TARGET is a store path")
		}
		rep.StorePath, rep.From = target, f.cache
		c := &cacheClient{base: strings.TrimRight(f.cache, "/"), http: &http.Client{Timeout: 10 * time.Minute}}
		ni, err := c.narinfo(ctx, target)
		if err != nil {
			return nil, &exitError{code: exitUsageErr, err: err}
		}
		if f.cacheKey != "" {
			if err := checkNarinfoSig(ni, f.cacheKey); err != nil {
				rep.NarinfoSig = err.Error()
				return notVerified(rep, err.Error()), nil
			}
			rep.NarinfoSig = "valid"
		}
		if narHash, rep.NarSize, err = c.narHash(ctx, ni); err != nil {
			if errors.Is(err, errNarMismatch) {
				return notVerified(rep, err.Error()), nil
			}
			return nil, &exitError{code: exitUsageErr, err: err}
		}
		if f.bundle == "" {
			sc, err := c.provenance(ctx, target)
			if err != nil {
				return nil, &exitError{code: exitUsageErr, err: err}
			}
			for _, b := range sc.Bundles {
				bundles = append(bundles, b)
			}
		}
	case strings.HasSuffix(target, ".nar"):
		if f.bundle == "" || f.storePath == "" {
			return nil, usageError("a NAR file needs --bundle and --store-path")
		}
		rep.StorePath, rep.From = f.storePath, target
		fh, err := os.Open(target)
		if err != nil {
			return nil, &exitError{code: exitUsageErr, err: err}
		}
		defer fh.Close()
		if narHash, rep.NarSize, err = hashStream(fh); err != nil {
			return nil, &exitError{code: exitUsageErr, err: err}
		}
	default:
		if !strings.HasPrefix(target, "/") {
			return nil, usageError("TARGET %q: want a store path, FILE.nar, or --cache URL STOREPATH", target)
		}
		if f.bundle == "" {
			return nil, usageError("a local store path needs --bundle FILE or --cache URL")
		}
		rep.StorePath, rep.From = target, "local store"
		real := target
		if f.storeRoot != "" {
			real = path.Join(f.storeRoot, target)
		}
		var err error
		if narHash, rep.NarSize, err = nix.HashNAR(real); err != nil {
			return nil, &exitError{code: exitUsageErr, err: fmt.Errorf("read %s: %w", target, err)}
		}
	}
	if f.bundle != "" {
		b, err := os.ReadFile(f.bundle)
		if err != nil {
			return nil, &exitError{code: exitUsageErr, err: err}
		}
		bundles = append(bundles, b)
	}
	rep.NarSHA256 = fmt.Sprintf("%x", narHash)

	builders := map[string]bool{}
	var lastErr error
	for _, b := range bundles {
		a := attestation{}
		vf, err := v.Verify(b, []attest.Subject{{Path: rep.StorePath, NarHash: narHash}})
		if err != nil {
			a.Error = err.Error()
			lastErr = err
			if p, perr := attest.InspectUnverified(b); perr == nil {
				a.Builder = p.BuilderID + " (unverified claim)"
			}
		} else {
			a.Verified = true
			fillAttestation(&a, vf)
			builders[vf.BuilderID] = true
		}
		rep.Attestations = append(rep.Attestations, a)
	}
	switch {
	case len(bundles) == 0:
		return notVerified(rep, "no provenance found"), nil
	case len(builders) >= f.quorum:
		rep.Verified = true
		rep.Verdict = fmt.Sprintf("verified: %d of %d required trusted builder(s) attest this NAR", len(builders), f.quorum)
		return rep, nil
	case len(builders) == 0:
		return notVerified(rep, lastErr.Error()), nil
	default:
		return notVerified(rep, fmt.Sprintf("quorum not met: %d distinct trusted builder(s), %d required", len(builders), f.quorum)), nil
	}
}

func notVerified(rep *report, reason string) *report {
	rep.Verified = false
	rep.Verdict = "NOT VERIFIED"
	rep.Reason = reason
	return rep
}

func fillAttestation(a *attestation, v *attest.Verified) {
	a.Builder, a.KeyID, a.Derivation, a.System = v.BuilderID, v.KeyID, v.DrvPath, v.System
	a.Installable, _ = v.External["installable"].(map[string]any)
	a.Source, _ = v.External["source"].(map[string]any)
	a.Workflow, _ = v.External["workflow"].(map[string]any)
	a.NixVersion, _ = v.Internal["nixVersion"].(string)
	md := v.Predicate.GetRunDetails().GetMetadata()
	a.Invocation = md.GetInvocationId()
	if md.GetStartedOn() != nil {
		t := md.GetStartedOn().AsTime()
		a.StartedOn = &t
	}
	if md.GetFinishedOn() != nil {
		t := md.GetFinishedOn().AsTime()
		a.FinishedOn = &t
	}
}

func printReport(g *globals, r *report) {
	w := g.stdout
	mark := "✗"
	if r.Verified {
		mark = "✓"
	}
	fmt.Fprintf(w, "%s %s\n", mark, r.StorePath)
	fmt.Fprintf(w, "  NAR sha256 %s, %d bytes (from %s)\n", r.NarSHA256, r.NarSize, r.From)
	if r.NarinfoSig != "" {
		fmt.Fprintf(w, "  narinfo signature: %s\n", r.NarinfoSig)
	}
	for i, a := range r.Attestations {
		if !a.Verified {
			fmt.Fprintf(w, "  attestation %d: rejected: %s\n", i+1, a.Error)
			continue
		}
		fmt.Fprintf(w, "  attestation %d: built by %q (key %s)\n", i+1, a.Builder, a.KeyID)
		fmt.Fprintf(w, "    from %s on %s", a.Derivation, a.System)
		if a.Installable != nil {
			fmt.Fprintf(w, " (%s)", describeInstallable(a.Installable))
		}
		fmt.Fprintln(w)
		if a.Source != nil {
			fmt.Fprintf(w, "    source %v at %v\n", a.Source["repository"], a.Source["revision"])
		}
		if wf := a.Workflow; wf != nil {
			fmt.Fprintf(w, "    forge job %v of %v/%v at %v (%v), captured by %v\n", wf["job"], wf["server"], wf["repository"], wf["sha"], wf["ref"], wf["capture"])
		}
		if a.Invocation != "" {
			fmt.Fprintf(w, "    invocation %s\n", a.Invocation)
		}
		if a.FinishedOn != nil {
			fmt.Fprintf(w, "    finished %s with Nix %s\n", a.FinishedOn.UTC().Format(time.RFC3339), a.NixVersion)
		}
	}
	fmt.Fprintf(w, "  verdict: %s\n", r.Verdict)
	if r.Reason != "" {
		fmt.Fprintf(w, "  reason: %s\n", r.Reason)
	}
}

func describeInstallable(m map[string]any) string {
	switch m["kind"] {
	case "file":
		return fmt.Sprintf("%v -A %v", m["file"], m["attr"])
	default:
		return fmt.Sprintf("%v", m["ref"])
	}
}

// hashStream returns the sha256 and length of what r yields.
func hashStream(r io.Reader) ([32]byte, uint64, error) {
	var sum [32]byte
	h := sha256.New()
	n, err := io.Copy(h, r)
	copy(sum[:], h.Sum(nil))
	return sum, uint64(n), err
}

func checkNarinfoSig(ni *narinfo.NarInfo, key string) error {
	if b, err := os.ReadFile(key); err == nil {
		key = strings.TrimSpace(string(b))
	}
	pk, err := signature.ParsePublicKey(key)
	if err != nil {
		return fmt.Errorf("--cache-key: %w", err)
	}
	if !signature.VerifyFirst(ni.Fingerprint(), ni.Signatures, []signature.PublicKey{pk}) {
		return fmt.Errorf("narinfo is not signed by cache key %s", pk.Name)
	}
	return nil
}

// errNarMismatch: the cache serves a NAR that is not what its narinfo says.
var errNarMismatch = errors.New("NAR does not match its narinfo")

// cacheClient reads a binary cache over HTTP.
type cacheClient struct {
	base string
	http *http.Client
}

func (c *cacheClient) get(ctx context.Context, rel string) (*http.Response, error) {
	u, err := url.JoinPath(c.base, rel)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return resp, nil
}

func (c *cacheClient) small(ctx context.Context, rel string) ([]byte, error) {
	resp, err := c.get(ctx, rel)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20+1))
	if err != nil {
		return nil, err
	}
	if len(b) > 4<<20 {
		return nil, fmt.Errorf("%s: larger than 4 MiB", rel)
	}
	return b, nil
}

func (c *cacheClient) narinfo(ctx context.Context, storePath string) (*narinfo.NarInfo, error) {
	if len(path.Base(storePath)) < 33 {
		return nil, fmt.Errorf("%s is not a store path", storePath)
	}
	b, err := c.small(ctx, cachepush.NarinfoKey(storePath))
	if err != nil {
		return nil, err
	}
	ni, err := narinfo.Parse(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("narinfo for %s: %w", storePath, err)
	}
	if ni.StorePath != storePath {
		return nil, fmt.Errorf("narinfo for %s names %s", storePath, ni.StorePath)
	}
	return ni, nil
}

func (c *cacheClient) provenance(ctx context.Context, storePath string) (*cachepush.Provenance, error) {
	b, err := c.small(ctx, cachepush.ProvenanceKey(storePath))
	if err != nil {
		return nil, fmt.Errorf("provenance: %w", err)
	}
	return cachepush.ParseProvenance(b)
}

// narHash downloads the NAR of ni, decompressing as it streams, and checks
// it against the narinfo's NarHash and NarSize.
func (c *cacheClient) narHash(ctx context.Context, ni *narinfo.NarInfo) ([32]byte, uint64, error) {
	var sum [32]byte
	if strings.Contains(ni.URL, "..") || strings.HasPrefix(ni.URL, "/") || strings.Contains(ni.URL, "://") {
		return sum, 0, fmt.Errorf("narinfo URL %q leaves the cache", ni.URL)
	}
	resp, err := c.get(ctx, ni.URL)
	if err != nil {
		return sum, 0, err
	}
	defer resp.Body.Close()
	var r io.Reader = resp.Body
	switch ni.Compression {
	case "zstd":
		d, err := zstd.NewReader(resp.Body, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return sum, 0, err
		}
		defer d.Close()
		r = d
	case "none", "":
	default:
		return sum, 0, fmt.Errorf("NAR compression %q is not supported (zstd and none are)", ni.Compression)
	}
	sum, n, err := hashStream(r)
	if err != nil {
		return sum, 0, fmt.Errorf("download %s: %w", ni.URL, err)
	}
	if ni.NarHash == nil || !bytes.Equal(ni.NarHash.Digest(), sum[:]) || n != ni.NarSize {
		return sum, n, fmt.Errorf("%w: got %d bytes sha256 %x, narinfo says %d bytes %v", errNarMismatch, n, sum, ni.NarSize, ni.NarHash)
	}
	return sum, n, nil
}
