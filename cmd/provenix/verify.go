package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/spf13/cobra"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/cacheclient"
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
	closure   bool
	tenant    string
	// pol is the policy the builders came from, when one did: verify
	// then counts distinct builders as the pusher does.
	pol *policy.Policy
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
  --cache URL --closure STOREPATH
                            the same for every path of STOREPATH's closure,
                            following the narinfos' References; a line per
                            path as it is done, then a summary
  STOREPATH                 a path in the local store (bundle from --bundle or --cache)
  FILE.nar --bundle B --store-path P

Trust comes from --key FILE (with --builder-id), keyless --identity
ID=ISSUER,SAN with --trusted-root, or --policy FILE; with none of them, the
data directory's policy.yaml. --require-tlog also demands that key-signed
bundles carry an entry from a transparency log in --trusted-root (or in the
policy's trusted_root), e.g. a Rekor v2 (rekor-tiles) log.

From a cache, the NAR must match its narinfo's NarHash and NarSize (reading
stops one byte past NarSize), and each bundle must attest the narinfo's
NarSize and References. A content-addressed path (narinfo CA: sources,
fixed-output derivation outputs, builtins.toFile) is verified by its content
address instead: the CA hash must match the content and the store path must
be the one Nix computes from it, so it needs no provenance and no quorum.

Exit status: 0 verified, 1 not verified, 2 usage or I/O error.`,
		Example: `  provenix verify --cache http://127.0.0.1:8080 --key builder.pub /nix/store/...-hello
  provenix verify --cache http://127.0.0.1:8080 --cache-key keys/cache.pub --closure /nix/store/...-top
  provenix verify --bundle hello.bundle.json --key builder.pub /nix/store/...-hello
  provenix verify --json --policy policy.yaml --bundle b.json --store-path /nix/store/...-hello hello.nar`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if f.closure {
				cr, err := runVerifyClosure(cmd.Context(), g, f, args[0])
				if err != nil {
					return err
				}
				return f.finish(g, cr, func() { printClosureSummary(g, cr) }, cr.Verified,
					fmt.Sprintf("%d of %d paths of the closure", cr.Bad, cr.Total))
			}
			rep, err := runVerify(cmd.Context(), g, f, args[0])
			if err != nil {
				return err
			}
			return f.finish(g, rep, func() { printReport(g, rep) }, rep.Verified, rep.Reason)
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
	fl.IntVar(&f.quorum, "quorum", 1, "require this many distinct trusted builders to attest the NAR (with a policy, distinct as its quorum rule for the path says: builders, owners or hosts)")
	fl.StringVar(&f.tenant, "tenant", "default", "tenant whose quorum overrides apply, with a policy")
	fl.BoolVar(&f.closure, "closure", false, "with --cache, verify every path of STOREPATH's closure (narinfo References, transitively)")
	return cmd
}

// finish prints a verdict (JSON or text) and turns "not verified" into
// exit status 1.
func (f *verifyFlags) finish(g *globals, v any, text func(), verified bool, why string) error {
	if f.json {
		if err := writeJSON(g, v); err != nil {
			return err
		}
	} else {
		text()
	}
	if !verified {
		return &exitError{code: exitFailed, err: errors.New("not verified: " + why)}
	}
	return nil
}

// report is what verify found about one path (cacheclient's type, so that
// the JSON output stays one format).
type report = cacheclient.Report

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
		f.pol = pol
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

// cacheClient builds the client of --cache, trusting --cache-key when given.
// distinct is the policy's rule of who counts as a distinct builder for
// a path, or nil (builder ids) without a policy.
func (f *verifyFlags) distinct() func(id, system, storePath string) string {
	if f.pol == nil {
		return nil
	}
	return func(id, system, storePath string) string {
		return f.pol.DistinctKey(id, f.pol.QuorumFor(f.tenant, system, storePath).Distinct)
	}
}

func (f *verifyFlags) cacheClient(g *globals) (*cacheclient.Client, error) {
	var keys []string
	if f.cacheKey != "" {
		key := f.cacheKey
		if b, err := os.ReadFile(key); err == nil {
			key = strings.TrimSpace(string(b))
		}
		keys = append(keys, key)
	}
	c, err := cacheclient.New(cacheclient.Options{
		URL: f.cache, PublicKeys: keys, Logger: g.logger(),
		RequestTimeout: 10 * time.Minute,
	})
	if err != nil {
		return nil, usageError("--cache/--cache-key: %v", err)
	}
	return c, nil
}

func (f *verifyFlags) check() error {
	if f.quorum < 1 {
		return usageError("--quorum must be at least 1")
	}
	if f.policy != "" && len(f.keys) > 0 {
		return usageError("give --key or --policy, not both")
	}
	if f.closure && (f.cache == "" || f.bundle != "") {
		return usageError("--closure needs --cache URL (and no --bundle): it verifies every path of the closure from the cache")
	}
	return nil
}

// cacheErr maps a cacheclient error that left no verdict to an exit error.
func cacheErr(err error) error {
	if errors.Is(err, cacheclient.ErrInvalidPath) {
		return usageError("with --cache, TARGET is a store path: %v", err)
	}
	return &exitError{code: exitUsageErr, err: err}
}

func runVerify(ctx context.Context, g *globals, f *verifyFlags, target string) (*report, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	v, err := f.verifier(g)
	if err != nil {
		return nil, err
	}
	var bundles [][]byte
	if f.bundle != "" {
		b, err := os.ReadFile(f.bundle)
		if err != nil {
			return nil, &exitError{code: exitUsageErr, err: err}
		}
		bundles = append(bundles, b)
	}
	if f.cache != "" {
		c, err := f.cacheClient(g)
		if err != nil {
			return nil, err
		}
		rep, err := c.Verify(ctx, target, cacheclient.VerifyOptions{Verifier: v, Quorum: f.quorum, Bundles: bundles, Distinct: f.distinct()})
		if err != nil {
			return nil, cacheErr(err)
		}
		return rep, nil
	}

	rep := &report{}
	var d cacheclient.NARDigest
	switch {
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
		if d.SHA256, d.Size, err = hashStream(fh); err != nil {
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
		if d.SHA256, d.Size, err = nix.HashNAR(real); err != nil {
			return nil, &exitError{code: exitUsageErr, err: fmt.Errorf("read %s: %w", target, err)}
		}
	}
	rep.NarSHA256, rep.NarSize = hex.EncodeToString(d.SHA256[:]), d.Size
	cacheclient.AssessBundles(rep, bundles, cacheclient.VerifyOptions{Verifier: v, Quorum: f.quorum, Distinct: f.distinct()})
	return rep, nil
}

// runVerifyClosure verifies target's closure from the cache, printing a
// line per path as each is done (unless JSON is asked for).
func runVerifyClosure(ctx context.Context, g *globals, f *verifyFlags, target string) (*cacheclient.ClosureReport, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	v, err := f.verifier(g)
	if err != nil {
		return nil, err
	}
	c, err := f.cacheClient(g)
	if err != nil {
		return nil, err
	}
	o := cacheclient.ClosureOptions{VerifyOptions: cacheclient.VerifyOptions{Verifier: v, Quorum: f.quorum, Distinct: f.distinct()}}
	// The walk fetches narinfos only; on a long closure over a slow link
	// it still takes a while, so say how far it got every few seconds.
	last := time.Now()
	o.Walking = func(found int) {
		if time.Since(last) > 2*time.Second {
			last = time.Now()
			fmt.Fprintf(g.stderr, "verify: %d paths of the closure found so far\n", found)
		}
	}
	if !f.json {
		o.Progress = func(done, total int, r *report) {
			fmt.Fprintf(g.stdout, "[%d/%d] %s\n", done, total, closureLine(r))
		}
	}
	cr, err := c.VerifyClosure(ctx, target, o)
	if err != nil {
		return nil, cacheErr(err)
	}
	return cr, nil
}

// closureLine is one path's line of verify --closure.
func closureLine(r *report) string {
	if !r.Verified {
		return fmt.Sprintf("✗ %s: %s", r.StorePath, r.Reason)
	}
	what := r.Verdict
	if r.ContentAddress != "" {
		what = "content-addressed (" + r.ContentAddress + ")"
		if n := verifiedAttestations(r); n > 0 {
			what += fmt.Sprintf(", %d attestation(s)", n)
		}
	} else if n := len(r.Attestations); n > 0 {
		a := r.Attestations[0]
		what = fmt.Sprintf("%s; built by %q", r.Verdict, a.Builder)
	}
	return fmt.Sprintf("✓ %s: %s", r.StorePath, what)
}

func verifiedAttestations(r *report) int {
	n := 0
	for _, a := range r.Attestations {
		if a.Verified {
			n++
		}
	}
	return n
}

func printClosureSummary(g *globals, cr *cacheclient.ClosureReport) {
	if cr.Verified {
		fmt.Fprintf(g.stdout, "closure of %s: all %d paths verified\n", cr.Root, cr.Total)
		return
	}
	fmt.Fprintf(g.stdout, "closure of %s: %d of %d paths NOT VERIFIED:\n", cr.Root, cr.Bad, cr.Total)
	for _, r := range cr.Paths {
		if !r.Verified {
			fmt.Fprintf(g.stdout, "  %s: %s\n", r.StorePath, r.Reason)
		}
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
	if r.ContentAddress != "" {
		fmt.Fprintf(w, "  content address: %s\n", r.ContentAddress)
	}
	for i, a := range r.Attestations {
		if !a.Verified {
			fmt.Fprintf(w, "  attestation %d: rejected: %s\n", i+1, a.Error)
			continue
		}
		fmt.Fprintf(w, "  attestation %d: built by %q (key %s)\n", i+1, a.Builder, a.KeyID)
		fmt.Fprintf(w, "    from %s on %s", a.Derivation, a.System)
		if a.Installable != nil {
			fmt.Fprintf(w, " (%s)", a.Installable)
		}
		fmt.Fprintln(w)
		if a.Source != nil {
			fmt.Fprintf(w, "    source %s at %s\n", a.Source.Repository, a.Source.Revision)
		}
		if wf := a.Workflow; wf != nil {
			fmt.Fprintf(w, "    forge job %s of %s/%s at %s (%s), captured by %s\n", wf.Job, wf.Server, wf.Repository, wf.Sha, wf.Ref, wf.Capture)
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

// hashStream returns the sha256 and length of what r yields.
func hashStream(r io.Reader) ([32]byte, uint64, error) {
	var sum [32]byte
	h := sha256.New()
	n, err := io.Copy(h, r)
	copy(sum[:], h.Sum(nil))
	return sum, uint64(n), err
}
