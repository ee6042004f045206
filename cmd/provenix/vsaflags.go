package main

import (
	"github.com/spf13/cobra"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/vsa"
)

// vsaFlags say how a pusher signs its verification summaries: with a key
// file, or keylessly for the OIDC identity of a token file.
type vsaFlags struct {
	key        string
	verifierID string
	publicURL  string
	fulcio     string
	rekor      string
	tsa        string
	tokenFile  string
	issuer     string
	san        string
}

func (f *vsaFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.key, "vsa-key", "", "key the pusher signs its verification summaries (VSAs) with: ECDSA P-256 PKCS#8 PEM, e.g. from 'provenix key generate --vsa' (default: the data directory's keys/vsa)")
	fl.StringVar(&f.verifierID, "vsa-verifier-id", "", "verifier.id of the VSAs, a URI (default "+vsa.DefaultVerifierID+")")
	fl.StringVar(&f.publicURL, "public-url", "", "the cache's public base URL, which the VSAs' resourceUri and policy uri start with (default: relative to the cache)")
	fl.StringVar(&f.fulcio, "vsa-fulcio-url", "", "sign VSAs keylessly: Fulcio URL (with --vsa-rekor-url, --vsa-id-token-file, --vsa-issuer and --vsa-san)")
	fl.StringVar(&f.rekor, "vsa-rekor-url", "", "keyless VSAs: Rekor v2 log URL")
	fl.StringVar(&f.tsa, "vsa-tsa-url", "", "keyless VSAs: RFC 3161 timestamp authority URL")
	fl.StringVar(&f.tokenFile, "vsa-id-token-file", "", "keyless VSAs: file holding the pusher's OIDC token, read before each signature (whatever issues the token rewrites it)")
	fl.StringVar(&f.issuer, "vsa-issuer", "", "keyless VSAs: the token's issuer, published for verifiers")
	fl.StringVar(&f.san, "vsa-san", "", "keyless VSAs: the certificate's subject (the token's identity), published for verifiers")
}

// options are the signer options the flags give; defaultKey is the key
// file used when neither a key nor keyless signing is asked for.
func (f *vsaFlags) options(defaultKey string) (vsa.SignerOptions, error) {
	o := vsa.SignerOptions{VerifierID: f.verifierID, KeyFile: f.key, IDTokenFile: f.tokenFile, Issuer: f.issuer, SAN: f.san}
	keyless := f.fulcio != "" || f.rekor != "" || f.tsa != "" || f.tokenFile != "" || f.issuer != "" || f.san != ""
	switch {
	case keyless && f.key != "":
		return o, usageError("--vsa-key and the keyless --vsa-* flags exclude each other")
	case keyless:
		o.Keyless = &attest.KeylessOptions{FulcioURL: f.fulcio, RekorURL: f.rekor, TSAURL: f.tsa}
	case f.key == "":
		o.KeyFile = defaultKey
	}
	return o, nil
}

// signer is the VSA signer the flags give.
func (f *vsaFlags) signer(defaultKey string) (*vsa.Signer, error) {
	o, err := f.options(defaultKey)
	if err != nil {
		return nil, err
	}
	s, err := vsa.NewSigner(o)
	if err != nil {
		return nil, usageError("%v (a pusher signs a verification summary of each path it publishes: give --vsa-key FILE, made by 'provenix key generate --vsa FILE', or the keyless --vsa-* flags)", err)
	}
	return s, nil
}
