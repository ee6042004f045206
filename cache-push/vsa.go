package cachepush

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/vsa"
)

// vsaState is what a pusher with Config.VSA signs summaries with: the
// published policy's bytes and its reference, fixed at New.
type vsaState struct {
	policyDoc []byte
	policy    vsa.Ref
}

func newVSAState(cfg *Config) (*vsaState, error) {
	if cfg.VSA == nil {
		return nil, nil
	}
	doc, err := cfg.Policy.Document()
	if err != nil {
		return nil, fmt.Errorf("cachepush: %w", err)
	}
	return &vsaState{policyDoc: doc, policy: vsa.Ref{URI: cachelayout.URL(cfg.CacheURL, cachelayout.PolicyKey), Digest: vsa.DocumentDigest(doc)}}, nil
}

// publishVerifier stores the policy every summary names, the verifier
// document (signed by the cache key) and the VSA public key, each only
// when it changed. Pushers sharing a cache share its VSA key as they
// share its Nix key: the last to open names the verifier.
func (p *Pusher) publishVerifier(ctx context.Context) error {
	if p.vsa == nil {
		return nil
	}
	d := cachelayout.VerifierDocument{Version: cachelayout.VerifierDocumentVersion, VerifierID: p.cfg.VSA.VerifierID()}
	var pem []byte
	if pub := p.cfg.VSA.PublicKey(); pub != nil {
		var err error
		if pem, err = attest.MarshalPublicKey(pub); err != nil {
			return fmt.Errorf("cachepush: VSA key: %w", err)
		}
		d.PublicKey = string(pem)
	} else {
		d.Issuer, d.SAN = p.cfg.VSA.Identity()
	}
	sig, err := p.cfg.CacheKey.Sign(rand.Reader, d.Fingerprint())
	if err != nil {
		return fmt.Errorf("cachepush: sign verifier document: %w", err)
	}
	d.Signatures = []string{sig.String()}
	doc, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return fmt.Errorf("cachepush: verifier document: %w", err)
	}
	if err := putChanged(ctx, p.cfg.Store, cachelayout.PolicyKey, p.vsa.policyDoc); err != nil {
		return err
	}
	if pem == nil {
		// A keyless verifier has no key; an old one would only mislead.
		if err := p.cfg.Store.Delete(ctx, cachelayout.VSAPublicKeyKey); err != nil && !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("cachepush: %s: %w", cachelayout.VSAPublicKeyKey, err)
		}
	} else if err := putChanged(ctx, p.cfg.Store, cachelayout.VSAPublicKeyKey, pem); err != nil {
		return err
	}
	return putChanged(ctx, p.cfg.Store, cachelayout.VerifierKey, append(doc, '\n'))
}

// putChanged stores b under key unless the store has exactly b there.
func putChanged(ctx context.Context, st store.Store, key string, b []byte) error {
	old, err := store.ReadAll(ctx, st, key, int64(len(b))+1)
	if err == nil && bytes.Equal(old, b) {
		return nil
	}
	if err := store.Put(ctx, st, key, bytes.NewReader(b)); err != nil {
		return fmt.Errorf("cachepush: write %s: %w", key, err)
	}
	return nil
}

// writeVSA signs and stores the verification summary of w's path (see
// vsaObject), committed at once: for a path already visible.
func (p *Pusher) writeVSA(ctx context.Context, w *Waiting) error {
	obj, err := p.vsaObject(ctx, w)
	if err != nil {
		return err
	}
	return store.CommitGroup(ctx, p.cfg.Store, obj)
}

// vsaObject signs the verification summary of w's path (its store path
// and NAR sha256 verified under the published policy, the bundles of its
// committed sidecar as input attestations) and writes it uncommitted;
// none without Config.VSA. makeVisible commits it in the stage before the
// narinfo, so no narinfo is visible without its summary.
func (p *Pusher) vsaObject(ctx context.Context, w *Waiting) ([]store.Object, error) {
	if p.vsa == nil {
		return nil, nil
	}
	sum, err := p.summary(ctx, w)
	if err != nil {
		return nil, err
	}
	b, err := p.cfg.VSA.Sign(ctx, sum)
	if err != nil {
		return nil, fmt.Errorf("cachepush: %s: %w", w.StorePath, err)
	}
	obj, err := store.Write(ctx, p.cfg.Store, cachelayout.VSAKey(w.StorePath), bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	return []store.Object{obj}, nil
}

// summary is what the pusher verified about w's path.
func (p *Pusher) summary(ctx context.Context, w *Waiting) (*vsa.Summary, error) {
	s := &vsa.Summary{
		Subjects:     []vsa.Subject{{Name: w.StorePath, Digest: map[string]string{"sha256": w.NarSHA256}}},
		TimeVerified: time.Now(),
		ResourceURI:  cachelayout.URL(p.cfg.CacheURL, cachelayout.NarinfoKey(w.StorePath)),
		Policy:       p.vsa.policy,
		Result:       vsa.Passed,
	}
	// The sidecar holds every bundle verified for this NAR; bundles are
	// only ever added to it, so each one's digest stays true.
	key := cachelayout.ProvenanceKey(w.StorePath)
	b, err := store.ReadAll(ctx, p.cfg.Store, key, maxNarinfoSize*4)
	switch {
	case err == nil:
		prov, err := cachelayout.ParseProvenance(b)
		if err != nil || prov.StorePath != w.StorePath || prov.NarSHA256 != w.NarSHA256 {
			return nil, rejected(ReasonInconsistent, fmt.Errorf("%s: its provenance sidecar is not for this NAR (%v)", w.StorePath, err))
		}
		for i, raw := range prov.Bundles {
			var c bytes.Buffer
			if err := json.Compact(&c, raw); err != nil {
				return nil, rejected(ReasonInconsistent, fmt.Errorf("%s: sidecar bundle %d: %w", w.StorePath, i, err))
			}
			s.InputAttestations = append(s.InputAttestations, vsa.Ref{
				URI:    cachelayout.URL(p.cfg.CacheURL, key) + "#/bundles/" + strconv.Itoa(i),
				Digest: vsa.SHA256(sha256.Sum256(c.Bytes())),
			})
		}
	case !errors.Is(err, store.ErrNotFound):
		return nil, err
	}
	if len(s.InputAttestations) > 0 {
		s.VerifiedLevels = append(s.VerifiedLevels, vsa.BuildLevel2)
	}
	if ni, err := narinfo.Parse(strings.NewReader(w.Narinfo)); err == nil && ni.CA != "" {
		s.VerifiedLevels = append(s.VerifiedLevels, vsa.ContentAddressed)
	}
	if len(s.VerifiedLevels) == 0 {
		// Neither provenance nor a content address: nothing the pusher
		// publishes, but say so rather than claim a level.
		s.VerifiedLevels = []string{vsa.BuildLevel0}
	}
	return s, nil
}

// backfillVSA gives an entry published without a summary (before the
// pusher signed them, or copied into the cache by other means), or with
// one under another policy than the pusher's, a new one, now that a
// result for it verified under this policy; a current summary is kept.
func (p *Pusher) backfillVSA(ctx context.Context, prev *narinfo.NarInfo, out attest.Output) error {
	if p.vsa == nil {
		return nil
	}
	b, err := store.ReadAll(ctx, p.cfg.Store, cachelayout.VSAKey(out.Path), attest.MaxBundleSize)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if err == nil {
		// Our own object: which policy it names decides, not who signed.
		if s, err := vsa.InspectUnverified(b); err == nil && s.Policy.Digest["sha256"] == p.vsa.policy.Digest["sha256"] {
			return nil
		}
	}
	return p.writeVSA(ctx, &Waiting{StorePath: out.Path, NarSHA256: out.NarHashHex(), Narinfo: prev.String()})
}
