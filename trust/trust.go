// Package trust turns what a user says to trust — builder key files,
// keyless certificate identities under a Sigstore trusted root, or a cache
// policy — into the attest.Verifier and the rule for counting distinct
// builders with which `provenix verify` and the workflow action check
// provenance. It decides which source of trust wins; cmd/provenix only
// parses flags into Options.
package trust

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/sigstore/sigstore-go/pkg/root"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/cacheclient"
)

// ErrNoTrust: nothing says whom to trust (no key, no identity, no policy,
// and no default policy file).
var ErrNoTrust = errors.New("no trusted builders: pass --key FILE (and --builder-id) or --policy FILE")

// KeyFile is a trusted builder's public key (PEM file) and the one builder
// id it may speak for.
type KeyFile struct {
	BuilderID string
	Path      string
}

// ParseKey reads a key given as FILE (trusted for defaultID) or ID=FILE.
func ParseKey(spec, defaultID string) KeyFile {
	if id, file, ok := strings.Cut(spec, "="); ok {
		return KeyFile{BuilderID: id, Path: file}
	}
	return KeyFile{BuilderID: defaultID, Path: spec}
}

// ParseIdentity reads a keyless builder given as ID=ISSUER,SAN; an ISSUER
// or SAN starting with ~ is a regular expression.
func ParseIdentity(spec string) (attest.TrustedIdentity, error) {
	id, rest, ok1 := strings.Cut(spec, "=")
	iss, san, ok2 := strings.Cut(rest, ",")
	if !ok1 || !ok2 || id == "" || iss == "" || san == "" {
		return attest.TrustedIdentity{}, fmt.Errorf("--identity %q: want ID=ISSUER,SAN", spec)
	}
	ti := attest.TrustedIdentity{ID: id, Issuer: iss, SAN: san}
	if r, ok := strings.CutPrefix(iss, "~"); ok {
		ti.Issuer, ti.IssuerRegexp = "", r
	}
	if r, ok := strings.CutPrefix(san, "~"); ok {
		ti.SAN, ti.SANRegexp = "", r
	}
	return ti, nil
}

// Options say whom to trust. Either Keys and Identities, or a Policy;
// with none of them, DefaultPolicy.
type Options struct {
	// Keys are trusted builder keys, each for one builder id.
	Keys []KeyFile
	// Identities are trusted keyless builders; they need TrustedRoot.
	Identities []attest.TrustedIdentity
	// TrustedRoot is a Sigstore trusted_root.json (Fulcio CA, Rekor and CT
	// logs) for Identities and RequireTlog; with a policy, it replaces the
	// policy's trusted_root for RequireTlog.
	TrustedRoot string
	// RequireSCT demands a certificate transparency timestamp of keyless
	// certificates (with Identities).
	RequireSCT bool
	// RequireTlog demands that key-signed bundles carry an entry from a
	// transparency log in TrustedRoot (or the policy's trusted_root): it
	// tightens a policy, never loosens one.
	RequireTlog bool
	// Policy is a cache policy file whose builders are trusted and whose
	// quorum rules say who counts as a distinct builder.
	Policy string
	// DefaultPolicy is the policy used when nothing else is given (the
	// data directory's policy.yaml); without that file, Open fails with
	// ErrNoTrust.
	DefaultPolicy string
	// Tenant is the tenant whose quorum overrides apply, with a policy.
	Tenant string
}

// Trust is a verifier and, when trust came from a policy, that policy.
// It does not change once Open returns.
type Trust struct {
	Verifier *attest.Verifier
	// Policy is the policy the builders came from, or nil.
	Policy *policy.Policy
	tenant string
}

// Open builds the verifier o describes. Every error is the caller's to fix
// (a missing or unreadable file, contradicting options).
func Open(o Options) (*Trust, error) {
	direct := len(o.Keys) > 0 || len(o.Identities) > 0
	if o.Policy != "" && direct {
		return nil, errors.New("give --key/--identity or --policy, not both")
	}
	polPath := o.Policy
	if polPath == "" && !direct {
		if o.DefaultPolicy == "" {
			return nil, ErrNoTrust
		}
		if _, err := os.Stat(o.DefaultPolicy); err != nil {
			return nil, ErrNoTrust
		}
		polPath = o.DefaultPolicy
	}
	if polPath != "" {
		return openPolicy(polPath, o)
	}
	var tb []attest.TrustedBuilder
	for _, k := range o.Keys {
		pub, err := attest.LoadPublicKeyFile(k.Path)
		if err != nil {
			return nil, fmt.Errorf("--key: %w", err)
		}
		tb = append(tb, attest.TrustedBuilder{ID: k.BuilderID, PublicKey: pub})
	}
	opts := []attest.VerifierOption{attest.WithKeys(tb...)}
	var tr root.TrustedMaterial
	if len(o.Identities) > 0 || o.RequireTlog {
		if o.TrustedRoot == "" {
			if o.RequireTlog {
				return nil, errors.New("--require-tlog needs --trusted-root (a trusted_root.json listing the transparency log)")
			}
			return nil, errors.New("--identity needs --trusted-root (the private Sigstore's trusted_root.json)")
		}
		var err error
		if tr, err = LoadRoot(o.TrustedRoot); err != nil {
			return nil, err
		}
	}
	if len(o.Identities) > 0 {
		opts = append(opts, attest.WithIdentities(o.Identities...))
		// SCTs are a property of keyless certificates: without identities
		// the flag has nothing to apply to.
		if o.RequireSCT {
			opts = append(opts, attest.WithSignedCertificateTimestamps())
		}
	}
	if o.RequireTlog {
		opts = append(opts, attest.WithRequiredTlog())
	}
	v, err := attest.NewVerifier(tr, opts...)
	if err != nil {
		return nil, err
	}
	return &Trust{Verifier: v}, nil
}

func openPolicy(path string, o Options) (*Trust, error) {
	pol, err := policy.Load(path)
	if err != nil {
		return nil, err
	}
	t := &Trust{Policy: pol, tenant: o.Tenant}
	if o.RequireTlog {
		// The option tightens a policy; the log comes from its
		// trusted_root, or from o.TrustedRoot.
		pol.RequireTlog = true
		if o.TrustedRoot != "" {
			tr, err := LoadRoot(o.TrustedRoot)
			if err != nil {
				return nil, err
			}
			if t.Verifier, err = pol.VerifierWith(tr); err != nil {
				return nil, err
			}
			return t, nil
		}
	}
	if t.Verifier, err = pol.Verifier(); err != nil {
		return nil, err
	}
	return t, nil
}

// LoadRoot reads a Sigstore trusted_root.json (--trusted-root).
func LoadRoot(path string) (root.TrustedMaterial, error) {
	tr, err := root.NewTrustedRootFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("--trusted-root: %w", err)
	}
	return tr, nil
}

// Distinct is the policy's rule of who counts as a distinct builder for a
// path (builders, owners or hosts, as the path's quorum rule in the
// tenant says), or nil without a policy: builder ids count.
func (t *Trust) Distinct() func(builderID, system, storePath string) string {
	if t.Policy == nil {
		return nil
	}
	pol, tenant := t.Policy, t.tenant
	return func(id, system, storePath string) string {
		return pol.DistinctKey(id, pol.QuorumFor(tenant, system, storePath).Distinct)
	}
}

// VerifyOptions are cacheclient's options for verifying with t: its
// verifier and its way of counting distinct builders toward quorum.
func (t *Trust) VerifyOptions(quorum int) cacheclient.VerifyOptions {
	return cacheclient.VerifyOptions{Verifier: t.Verifier, Quorum: quorum, Distinct: t.Distinct()}
}

// CacheRequestTimeout bounds each request to a cache being verified,
// including the download of its NAR.
const CacheRequestTimeout = 10 * time.Minute

// CacheEntry is one cache entry to check against one builder key.
type CacheEntry struct {
	CacheURL  string
	StorePath string
	Key       KeyFile
	Logger    *slog.Logger
}

// VerifyCacheEntry verifies e.StorePath in the cache at e.CacheURL against
// one trusted builder key, quorum 1, narinfo signatures unchecked: what
// `provenix verify --cache URL --key FILE --builder-id ID STOREPATH` does
// (Report.WriteText prints what it prints). A verdict, verified or not, is a
// Report with a nil error; an error means none was reached (a bad key file,
// no narinfo, an unreadable cache).
func VerifyCacheEntry(ctx context.Context, e CacheEntry) (*cacheclient.Report, error) {
	t, err := Open(Options{Keys: []KeyFile{e.Key}})
	if err != nil {
		return nil, err
	}
	c, err := cacheclient.New(cacheclient.Options{URL: e.CacheURL, Logger: e.Logger, RequestTimeout: CacheRequestTimeout})
	if err != nil {
		return nil, err
	}
	return c.Verify(ctx, e.StorePath, t.VerifyOptions(1))
}
