package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cacheclient"
	"codeberg.org/provenix/provenix/trust"
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
	vsaKey    string
	reqVSA    bool
	noVSA     bool
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

From a cache, the pusher's verification summary (VSA) of each path is checked
too: with --vsa-key FILE against that key; otherwise against the key the
cache publishes (provenix/verifier.json), trusted only when it is signed by
the --cache-key (for a verifier that signs keylessly, its published identity,
checked under --trusted-root). A summary must be signed by that key, be about the NAR at
hand and name the policy the cache serves (provenix/policy.json). A path
without one fails with --vsa-key or --require-vsa, and is reported
otherwise; --no-vsa skips summaries.

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
			return f.finish(g, rep, func() { rep.WriteText(g.stdout) }, rep.Verified, rep.Reason)
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
	fl.StringVar(&f.vsaKey, "vsa-key", "", "with --cache, require each path's verification summary (VSA) to be signed by this PEM public key")
	fl.BoolVar(&f.reqVSA, "require-vsa", false, "with --cache, fail paths without a verification summary from the cache's verifier")
	fl.BoolVar(&f.noVSA, "no-vsa", false, "with --cache, do not check verification summaries")
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

// trust is whom the flags say to trust.
func (f *verifyFlags) trust(g *globals) (*trust.Trust, error) {
	o := trust.Options{TrustedRoot: f.trustRoot, RequireSCT: f.reqSCT, RequireTlog: f.reqTlog,
		Policy: f.policy, DefaultPolicy: g.paths().Policy(), Tenant: f.tenant}
	for _, k := range f.keys {
		o.Keys = append(o.Keys, trust.ParseKey(k, f.builderID))
	}
	for _, spec := range f.ids {
		id, err := trust.ParseIdentity(spec)
		if err != nil {
			return nil, usageError("%v", err)
		}
		o.Identities = append(o.Identities, id)
	}
	t, err := trust.Open(o)
	if err != nil {
		return nil, usageError("%v", err)
	}
	return t, nil
}

// cacheClient builds the client of --cache, trusting --cache-key when given.
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
		RequestTimeout: trust.CacheRequestTimeout,
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
	if f.noVSA && (f.vsaKey != "" || f.reqVSA) {
		return usageError("--no-vsa excludes --vsa-key and --require-vsa")
	}
	if (f.vsaKey != "" || f.reqVSA) && f.cache == "" {
		return usageError("--vsa-key and --require-vsa check a cache's verification summaries: they need --cache")
	}
	if f.closure && (f.cache == "" || f.bundle != "") {
		return usageError("--closure needs --cache URL (and no --bundle): it verifies every path of the closure from the cache")
	}
	return nil
}

// vsaOptions are how the flags say to check verification summaries.
func (f *verifyFlags) vsaOptions() (cacheclient.VSAOptions, error) {
	o := cacheclient.VSAOptions{Require: f.reqVSA, Off: f.noVSA}
	if f.trustRoot != "" && !f.noVSA {
		tr, err := trust.LoadRoot(f.trustRoot)
		if err != nil {
			return o, usageError("%v", err)
		}
		o.TrustedRoot = tr
	}
	if f.vsaKey != "" {
		k, err := attest.LoadPublicKeyFile(f.vsaKey)
		if err != nil {
			return o, usageError("--vsa-key: %v", err)
		}
		o.Key = k
	}
	return o, nil
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
	t, err := f.trust(g)
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
	o := t.VerifyOptions(f.quorum)
	if o.VSA, err = f.vsaOptions(); err != nil {
		return nil, err
	}
	if f.cache != "" {
		c, err := f.cacheClient(g)
		if err != nil {
			return nil, err
		}
		o.Bundles = bundles
		rep, err := c.Verify(ctx, target, o)
		if err != nil {
			return nil, cacheErr(err)
		}
		return rep, nil
	}
	l := cacheclient.Local{StorePath: target, StoreRoot: f.storeRoot}
	switch {
	case strings.HasSuffix(target, ".nar"):
		if f.bundle == "" || f.storePath == "" {
			return nil, usageError("a NAR file needs --bundle and --store-path")
		}
		l = cacheclient.Local{StorePath: f.storePath, NARFile: target}
	case !strings.HasPrefix(target, "/"):
		return nil, usageError("TARGET %q: want a store path, FILE.nar, or --cache URL STOREPATH", target)
	case f.bundle == "":
		return nil, usageError("a local store path needs --bundle FILE or --cache URL")
	}
	rep, err := cacheclient.VerifyLocal(l, bundles, o)
	if err != nil {
		return nil, &exitError{code: exitUsageErr, err: err}
	}
	return rep, nil
}

// runVerifyClosure verifies target's closure from the cache, printing a
// line per path as each is done (unless JSON is asked for).
func runVerifyClosure(ctx context.Context, g *globals, f *verifyFlags, target string) (*cacheclient.ClosureReport, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	t, err := f.trust(g)
	if err != nil {
		return nil, err
	}
	c, err := f.cacheClient(g)
	if err != nil {
		return nil, err
	}
	o := cacheclient.ClosureOptions{VerifyOptions: t.VerifyOptions(f.quorum)}
	if o.VSA, err = f.vsaOptions(); err != nil {
		return nil, err
	}
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
		if n := r.VerifiedAttestations(); n > 0 {
			what += fmt.Sprintf(", %d attestation(s)", n)
		}
	} else if n := len(r.Attestations); n > 0 {
		a := r.Attestations[0]
		what = fmt.Sprintf("%s; built by %q", r.Verdict, a.Builder)
	}
	return fmt.Sprintf("✓ %s: %s", r.StorePath, what)
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
