package attest

import (
	"bytes"
	"crypto"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	intoto "github.com/in-toto/attestation/go/v1"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/signature"
)

// MaxBundleSize bounds what Verify parses: a provenance bundle is a few KiB.
const MaxBundleSize = 1 << 20

// TrustedBuilder is a builder we accept provenance from: the key that signs
// for it and the one builder id that key may claim, so a trusted key cannot
// speak for another builder.
type TrustedBuilder struct {
	ID        string
	PublicKey crypto.PublicKey
}

// Verifier checks bundles against a fixed set of trusted builders. It is
// complete when NewVerifier returns and never changes afterwards, so one
// Verifier is safe for concurrent use.
type Verifier struct {
	byKeyID map[string]TrustedBuilder
	sig     *verify.Verifier
	keys    root.TrustedMaterial

	// sigTlog, with WithRequiredTlog, replaces sig for key-signed
	// bundles: the same keys plus a log entry from a trusted log.
	sigTlog *verify.Verifier

	// keyless: certificate identities (Fulcio) checked against a trusted
	// root with its transparency log.
	keyless    *verify.Verifier
	identities []TrustedIdentity
}

// VerifierOption configures NewVerifier. Options are checked together
// when NewVerifier runs, so their order does not matter.
type VerifierOption func(*verifierConfig)

type verifierConfig struct {
	keys         []TrustedBuilder
	identities   []TrustedIdentity
	identitiesOn bool
	requireTlog  bool
	requireSCT   bool
}

// WithKeys trusts key-signed bundles from builders. Each key must be ECDSA
// P-256 and appear once; it may speak only for its builder's id. It may be
// given more than once; the builders add up.
func WithKeys(builders ...TrustedBuilder) VerifierOption {
	return func(c *verifierConfig) { c.keys = append(c.keys, builders...) }
}

// WithIdentities trusts keyless bundles whose certificate chains to the
// trusted root (a Fulcio CA with its Rekor log, e.g. a private Sigstore's
// trusted_root.json), whose signature is in the transparency log, and whose
// certificate names one of ids. Each identity's bundle must claim the
// identity's builder id. It needs a trusted root and at least one identity.
func WithIdentities(ids ...TrustedIdentity) VerifierOption {
	return func(c *verifierConfig) {
		c.identitiesOn = true
		c.identities = append(c.identities, ids...)
	}
}

// WithRequiredTlog accepts a key-signed bundle only when it also carries an
// entry from a transparency log in the trusted root (its tlogs; for Rekor
// v2 the log is looked up by its log id, the sha256 of its key, and its
// checkpoint must be signed for the host name of its base URL). Keyless
// bundles always need a log entry. Without it, key-signed bundles verify
// by key alone, log entry or not.
func WithRequiredTlog() VerifierOption {
	return func(c *verifierConfig) { c.requireTlog = true }
}

// WithSignedCertificateTimestamps also demands a certificate transparency
// timestamp of keyless certificates: right for the public good instance,
// optional for a private Fulcio run without a CT log. It needs
// WithIdentities.
func WithSignedCertificateTimestamps() VerifierOption {
	return func(c *verifierConfig) { c.requireSCT = true }
}

// ErrVerifierOptions: NewVerifier's options contradict each other or lack
// what they need (identities or a required log without a trusted root,
// SCTs without identities, two builders sharing a key).
var ErrVerifierOptions = errors.New("attest: invalid verifier options")

// NewVerifier returns a verifier trusting what opts say. trusted, the
// Sigstore trusted material (CAs, transparency logs), serves
// WithIdentities and WithRequiredTlog; it may be nil for keys alone. It
// never adds signing keys: a key-signed bundle verifies only against the
// WithKeys builders. With no keys and no identities the verifier trusts
// no bundle at all (content-addressed paths need none).
func NewVerifier(trusted root.TrustedMaterial, opts ...VerifierOption) (*Verifier, error) {
	var c verifierConfig
	for _, o := range opts {
		o(&c)
	}
	switch {
	case c.identitiesOn && len(c.identities) == 0:
		return nil, fmt.Errorf("%w: keyless verification needs at least one identity", ErrVerifierOptions)
	case c.identitiesOn && trusted == nil:
		return nil, fmt.Errorf("%w: keyless identities need a trusted root (Fulcio CA and transparency log)", ErrVerifierOptions)
	case c.requireSCT && !c.identitiesOn:
		return nil, fmt.Errorf("%w: certificate transparency timestamps are checked on keyless certificates, and no identity is trusted", ErrVerifierOptions)
	case c.requireTlog && (trusted == nil || len(trusted.RekorLogs()) == 0):
		return nil, fmt.Errorf("%w: requiring a transparency log needs a trusted root with at least one log (tlogs)", ErrVerifierOptions)
	}
	v := &Verifier{byKeyID: make(map[string]TrustedBuilder, len(c.keys))}
	if err := v.initKeys(c.keys); err != nil {
		return nil, err
	}
	if c.identitiesOn {
		if err := v.initKeyless(trusted, c.identities, c.requireSCT); err != nil {
			return nil, err
		}
	}
	if c.requireTlog {
		if err := v.initTlog(trusted); err != nil {
			return nil, err
		}
	}
	return v, nil
}

func (v *Verifier) initKeys(builders []TrustedBuilder) error {
	if len(builders) == 0 {
		return nil
	}
	keys := make(map[string]*root.ExpiringKey, len(builders))
	for _, b := range builders {
		if b.ID == "" {
			return fmt.Errorf("%w: trusted builder without an id", ErrVerifierOptions)
		}
		id, err := KeyID(b.PublicKey)
		if err != nil {
			return fmt.Errorf("%w: builder %s: %w", ErrVerifierOptions, b.ID, err)
		}
		if prev, dup := v.byKeyID[id]; dup {
			return fmt.Errorf("%w: builders %s and %s share a key", ErrVerifierOptions, prev.ID, b.ID)
		}
		sv, err := signature.LoadVerifier(b.PublicKey, crypto.SHA256)
		if err != nil {
			return fmt.Errorf("%w: builder %s: %w", ErrVerifierOptions, b.ID, err)
		}
		v.byKeyID[id] = b
		keys[id] = root.NewExpiringKey(sv, time.Time{}, time.Time{})
	}
	// Key-signed bundles carry no timestamps: without a transparency log
	// there is nothing to observe the signing time with. Every verifier
	// leaves the Statement's predicate to us (WithoutStatementPredicate):
	// Verify reads the verified payload itself (readStatement), and
	// sigstore-go only summarises its type and subjects.
	v.keys = root.NewTrustedPublicKeyMaterialFromMapping(keys)
	sig, err := verify.NewVerifier(v.keys, verify.WithNoObserverTimestamps(), verify.WithoutStatementPredicate())
	if err != nil {
		return fmt.Errorf("attest: %w", err)
	}
	v.sig = sig
	return nil
}

// Subject is an artifact the caller knows independently of the bundle: a
// store path and the sha256 of the NAR it actually holds.
type Subject struct {
	Path    string
	NarHash [32]byte
}

// Verified is a bundle that passed every check.
type Verified struct {
	*Provenance
	Builder TrustedBuilder
	KeyID   string
}

// Verify checks bundleJSON and returns its provenance. want is required and
// non-empty, as sigstore-go requires an artifact digest (checked here by
// checkArtifacts instead): a signature over some Statement proves nothing
// until it is tied to the bytes at hand. Every
// wanted subject must appear in the Statement by name with an equal digest;
// the Statement must be SLSA v1 provenance of BuildType; its builder id must
// be the one bound to the signing key.
func (v *Verifier) Verify(bundleJSON []byte, want []Subject) (*Verified, error) {
	if len(want) == 0 {
		return nil, errors.New("attest: verify needs at least one expected subject")
	}
	if len(bundleJSON) > MaxBundleSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrMalformedBundle, len(bundleJSON), MaxBundleSize)
	}
	var b bundle.Bundle
	if err := b.UnmarshalJSON(bundleJSON); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedBundle, err)
	}
	return v.VerifyEntity(&b, want)
}

// VerifyEntity is Verify for a parsed Sigstore entity (a bundle, or a
// test entity from sigstore-go's VirtualSigstore).
func (v *Verifier) VerifyEntity(e verify.SignedEntity, want []Subject) (*Verified, error) {
	if len(want) == 0 {
		return nil, errors.New("attest: verify needs at least one expected subject")
	}
	// A keyless bundle's provenance is read before its signature is
	// checked, for the identities of the builder it claims. The
	// signature is then checked over the payload read, the same bytes:
	// once it verifies, that reading is the verified provenance, and
	// is not read again.
	var pre *Provenance
	claimed := func(env *bundle.Envelope) (string, error) {
		prov, err := claimedProvenance(env)
		if err != nil {
			return "", err
		}
		pre = prov
		return prov.BuilderID, nil
	}
	diagnose := func(st *intoto.Statement) error { return diagnoseDigests(st, want) }
	env, err := envelope(e)
	if err != nil {
		return nil, err
	}
	s, err := v.verifySigned(e, env, claimed, diagnose)
	if err != nil {
		return nil, err
	}
	prov := pre
	if prov == nil {
		// The verified payload, read once (sigstore-go was told to
		// leave its predicate alone).
		st, pred, err := readStatement(env)
		if err != nil {
			return nil, err
		}
		if err := checkArtifacts(st, diagnose); err != nil {
			return nil, err
		}
		if prov, err = parseStatement(st, pred); errors.Is(err, ErrPredicateType) {
			// Maybe a valid statement of another kind the same key signs:
			// not ours to judge.
			return nil, err
		} else if err != nil {
			return nil, &SignedMalformedError{BuilderID: s.builder.ID, Err: err}
		}
	} else if err := checkArtifacts(prov.Statement, diagnose); err != nil {
		return nil, err
	}
	if err := checkSubjects(prov.Outputs, want); err != nil {
		return nil, err
	}
	if prov.BuilderID != s.builder.ID {
		return nil, &SignedMalformedError{BuilderID: s.builder.ID,
			Err: fmt.Errorf("%w: provenance claims builder %q, signer %s is trusted for %q", ErrUntrustedBuilder, prov.BuilderID, s.keyID, s.builder.ID)}
	}
	return &Verified{Provenance: prov, Builder: s.builder, KeyID: s.keyID}, nil
}

// Signed is a bundle whose signature verified for a trusted signer, with
// subjects carrying every expected sha256 digest, whatever its predicate
// says: VerifyStatement's result, for Statements other than provenance
// (verification summaries). Signer.ID is the id the signer is trusted
// for; the caller checks that the Statement claims no other.
type Signed struct {
	Statement *intoto.Statement
	// Predicate is the signed predicate's JSON, as in the payload.
	Predicate []byte
	Signer    TrustedBuilder
	KeyID     string
}

// VerifyStatement checks bundleJSON's signature against the trusted keys
// and identities and that its Statement has a subject with each of the
// sha256 digests (at least one is required), and returns the Statement
// unparsed. claimedID reads the signer id an unverified Statement claims:
// a keyless bundle is checked only against that id's identities, as
// Verify does with provenance's builder id.
func (v *Verifier) VerifyStatement(bundleJSON []byte, digests [][32]byte, claimedID func(*intoto.Statement) (string, error)) (*Signed, error) {
	if len(digests) == 0 {
		return nil, errors.New("attest: verify needs at least one expected subject digest")
	}
	if len(bundleJSON) > MaxBundleSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrMalformedBundle, len(bundleJSON), MaxBundleSize)
	}
	var b bundle.Bundle
	if err := b.UnmarshalJSON(bundleJSON); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedBundle, err)
	}
	// A keyless bundle's Statement is read before its signature is
	// checked, for the signer id it claims; once the signature over
	// those bytes verifies, that reading is the verified Statement.
	var pre *intoto.Statement
	claimed := func(env *bundle.Envelope) (string, error) {
		st, err := env.Statement()
		if err != nil {
			return "", fmt.Errorf("%w: %w", ErrMalformedBundle, err)
		}
		pre = st
		return claimedID(st)
	}
	diagnose := func(st *intoto.Statement) error {
		for _, d := range digests {
			if !hasDigest(st, d) {
				return fmt.Errorf("%w: no subject has sha256 %x", ErrDigestMismatch, d)
			}
		}
		return nil
	}
	env, err := envelope(&b)
	if err != nil {
		return nil, err
	}
	s, err := v.verifySigned(&b, env, claimed, diagnose)
	if err != nil {
		return nil, err
	}
	// The whole Statement, predicate included, as callers (vsa) read
	// it: sigstore-go was told to leave the predicate alone.
	st := pre
	if st == nil {
		if st, err = env.Statement(); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrMalformedBundle, err)
		}
	}
	if err := checkArtifacts(st, diagnose); err != nil {
		return nil, err
	}
	return &Signed{Statement: st, Predicate: predicateJSON(env), Signer: s.builder, KeyID: s.keyID}, nil
}

func hasDigest(st *intoto.Statement, d [32]byte) bool {
	for _, s := range st.GetSubject() {
		if h, err := hex.DecodeString(s.GetDigest()["sha256"]); err == nil && bytes.Equal(h, d[:]) {
			return true
		}
	}
	return false
}

// signer is who signed a bundle verifySigned accepted: the builder the
// key or certificate identity is trusted for, and the key or identity.
type signer struct {
	builder TrustedBuilder
	keyID   string
}

// envelope is e's DSSE envelope; provenance bundles carry nothing else.
func envelope(e verify.SignedEntity) (*bundle.Envelope, error) {
	sc, err := e.SignatureContent()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedBundle, err)
	}
	env, ok := sc.(*bundle.Envelope)
	if !ok || env == nil || env.Envelope == nil {
		return nil, fmt.Errorf("%w: not a DSSE envelope bundle", ErrMalformedBundle)
	}
	return env, nil
}

// verifySigned checks e's signature (env is its envelope), for any
// predicate, and returns who signed it. claimed names the signer id a
// keyless bundle claims; diagnose turns a failed verification of a
// readable Statement into a more precise error, or returns nil.
//
// The caller reads the verified Statement from env and must then call
// checkArtifacts on it: sigstore-go checks the signature, certificate,
// log entry and identity, but not the subjects' digests
// (WithoutArtifactUnsafe), as it would read the payload a second time
// for them (and the verifiers are built WithoutStatementPredicate, so
// its result carries only a summary of the Statement).
func (v *Verifier) verifySigned(e verify.SignedEntity, env *bundle.Envelope, claimed func(*bundle.Envelope) (string, error), diagnose func(*intoto.Statement) error) (signer, error) {
	vc, err := e.VerificationContent()
	if err != nil {
		return signer{}, fmt.Errorf("%w: %w", ErrMalformedBundle, err)
	}
	var (
		tb     TrustedBuilder
		keyID  string
		sigVer *verify.Verifier
		policy verify.PolicyBuilder
		ids    []TrustedIdentity
	)
	switch {
	case vc.PublicKey() != nil:
		keyID = vc.PublicKey().Hint()
		var ok bool
		if tb, ok = v.byKeyID[keyID]; !ok {
			return signer{}, fmt.Errorf("%w: key %s", ErrUnknownSigner, keyID)
		}
		sigVer, policy = v.sig, verify.NewPolicy(verify.WithoutArtifactUnsafe(), verify.WithKey())
		if v.sigTlog != nil {
			sigVer = v.sigTlog
		}
	case vc.Certificate() != nil && v.keyless != nil:
		// Only the identities of the builder the statement claims: the
		// claim is checked again once the signature verifies.
		claimed, err := claimed(env)
		if err != nil {
			return signer{}, err
		}
		if ids = v.identitiesFor(claimed); len(ids) == 0 {
			return signer{}, fmt.Errorf("%w: bundle claims builder %q, for which no keyless identity is trusted", ErrUntrustedBuilder, claimed)
		}
		opts := []verify.PolicyOption{}
		for _, id := range ids {
			opts = append(opts, verify.WithCertificateIdentity(id.matcher))
		}
		sigVer, policy = v.keyless, verify.NewPolicy(verify.WithoutArtifactUnsafe(), opts...)
	case vc.Certificate() != nil:
		return signer{}, fmt.Errorf("%w: bundle is signed keylessly and no certificate identities are trusted", ErrUnknownSigner)
	default:
		return signer{}, fmt.Errorf("%w: bundle carries neither a public key hint nor a certificate", ErrUnknownSigner)
	}
	res, err := sigVer.Verify(e, policy)
	if err != nil {
		if st, serr := env.Statement(); serr == nil {
			if derr := diagnose(st); derr != nil {
				return signer{}, derr
			}
		}
		if vc.Certificate() != nil && strings.Contains(err.Error(), "certificate identit") {
			return signer{}, fmt.Errorf("%w: %w", ErrUnknownSigner, err)
		}
		if sigVer == v.sigTlog && v.sigTlog != nil {
			if terr := v.diagnoseTlog(e, policy, err); terr != nil {
				return signer{}, terr
			}
		}
		return signer{}, fmt.Errorf("%w: %w", ErrSignature, err)
	}
	if res.Statement == nil {
		return signer{}, fmt.Errorf("%w: payload is not an in-toto statement", ErrMalformedBundle)
	}
	if vc.Certificate() != nil {
		id, err := matchIdentity(res, ids)
		if err != nil {
			return signer{}, err
		}
		tb, keyID = TrustedBuilder{ID: id.ID}, id.String()
	}
	return signer{builder: tb, keyID: keyID}, nil
}

// Limits sigstore-go puts on a Statement whose subjects it checks.
const (
	maxSubjects       = 1024
	maxSubjectDigests = 32
)

// checkArtifacts makes, on the verified Statement as we read it, the
// artifact check sigstore-go's WithArtifactDigests makes on its own
// reading of the payload (which verifySigned spares it): at most
// maxSubjects subjects of at most maxSubjectDigests digests each, every
// digest hex, and every expected sha256 a subject's (digests, which
// returns ErrDigestMismatch). It runs before anything else the
// Statement says is looked at, where sigstore-go's check ran, so a
// Statement failing it is refused as before and blamed on no one: a
// wanted digest no subject has as ErrDigestMismatch, as before; too many
// subjects or digests, or one not hex, as ErrMalformedBundle (sigstore-go
// failed the signature check for them: ErrSignature). sigstore-go's
// reading (encoding/json) and ours (protojson: readStatement, or
// Envelope.Statement) agree on the subjects of every payload ours
// accepts: it refuses unknown and duplicate keys, so the lenient key
// matching has no other key to pick.
func checkArtifacts(st *intoto.Statement, digests func(*intoto.Statement) error) error {
	if n := len(st.GetSubject()); n > maxSubjects {
		return fmt.Errorf("%w: %d subjects, limit %d", ErrMalformedBundle, n, maxSubjects)
	}
	for _, s := range st.GetSubject() {
		if n := len(s.GetDigest()); n > maxSubjectDigests {
			return fmt.Errorf("%w: subject %q has %d digests, limit %d", ErrMalformedBundle, s.GetName(), n, maxSubjectDigests)
		}
		for alg, d := range s.GetDigest() {
			if _, err := hex.DecodeString(d); err != nil {
				return fmt.Errorf("%w: subject %q: %s digest is not hex", ErrMalformedBundle, s.GetName(), alg)
			}
		}
	}
	return digests(st)
}

func checkSubjects(have []Output, want []Subject) error {
	byName := make(map[string]Output, len(have))
	for _, o := range have {
		byName[o.Path] = o
	}
	for _, w := range want {
		o, ok := byName[w.Path]
		if !ok {
			return fmt.Errorf("%w: statement has no subject %s", ErrSubjectMismatch, w.Path)
		}
		if o.NarHash != w.NarHash {
			return fmt.Errorf("%w: %s: attested sha256 %x, artifact has %x", ErrDigestMismatch, w.Path, o.NarHash, w.NarHash)
		}
	}
	return nil
}

// diagnoseDigests returns ErrDigestMismatch when a wanted digest is no
// subject's, naming the subject of the wanted path if there is one; nil
// otherwise. It judges verified payloads (checkArtifacts) and unverified
// ones (whose failure it explains).
func diagnoseDigests(st *intoto.Statement, want []Subject) error {
	for _, w := range want {
		if !hasDigest(st, w.NarHash) {
			for _, s := range st.GetSubject() {
				if s.GetName() == w.Path {
					return fmt.Errorf("%w: %s: attested sha256 %s, artifact has %x", ErrDigestMismatch, w.Path, s.GetDigest()["sha256"], w.NarHash)
				}
			}
			return fmt.Errorf("%w: no subject has sha256 %x (%s)", ErrDigestMismatch, w.NarHash, w.Path)
		}
	}
	return nil
}

// InspectUnverified decodes the Statement of a bundle without checking
// anything, for printing what a rejected bundle claimed. Never trust it.
func InspectUnverified(bundleJSON []byte) (*Provenance, error) {
	var b bundle.Bundle
	if err := b.UnmarshalJSON(bundleJSON); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedBundle, err)
	}
	env, err := b.Envelope()
	if err != nil || env == nil {
		return nil, fmt.Errorf("%w: not a DSSE envelope bundle", ErrMalformedBundle)
	}
	return claimedProvenance(env)
}

// claimedProvenance reads an envelope's (not yet verified) provenance,
// whose builder id says whose identities may have signed it.
func claimedProvenance(env *bundle.Envelope) (*Provenance, error) {
	st, pred, err := readStatement(env)
	if err != nil {
		return nil, err
	}
	return parseStatement(st, pred)
}

// predicateJSON returns the raw predicate of an envelope's payload, or nil.
// The signature covers the payload bytes, so this is the signed predicate;
// and env.Statement's strict protojson decode of the same payload
// (VerifyStatement's) has already refused duplicate or unknown keys, so
// encoding/json's lenient key matching cannot pick a different
// "predicate" than the one verified.
func predicateJSON(env *bundle.Envelope) []byte {
	payload, err := env.DecodeB64Payload()
	if err != nil {
		return nil
	}
	return payloadPredicate(payload)
}

// payloadPredicate returns the raw predicate of a Statement's JSON, or nil.
func payloadPredicate(payload []byte) []byte {
	var st struct {
		Predicate json.RawMessage `json:"predicate"`
	}
	if json.Unmarshal(payload, &st) != nil || len(st.Predicate) == 0 {
		return nil
	}
	return st.Predicate
}
