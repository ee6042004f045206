package action

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	intoto "github.com/in-toto/attestation/go/v1"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/builder"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/runner/capture"
)

func (s *step) buildWithKey(ctx context.Context) error {
	in := s.in
	if in.key == "" {
		return errors.New("signing: key needs the key input (a PEM private builder key from a secret)")
	}
	if in.builderID == "" {
		return errors.New("signing: key needs builder-id, the id the cache policy trusts this key for")
	}
	if in.natsURL == "" {
		return errors.New("signing: key needs nats-url, the NATS server to publish to")
	}
	keyFile, err := s.writeSecret("provenix-key-*", []byte(in.key+"\n"))
	if err != nil {
		return fmt.Errorf("write the key to a temporary file: %w", err)
	}
	defer os.Remove(keyFile)
	signer, err := attest.LoadSigner(keyFile)
	if err != nil {
		// The error names the temporary file, never the key.
		return fmt.Errorf("input key is not a usable builder key: %w", err)
	}
	pub, err := signer.GetPublicKeyPem()
	if err != nil {
		return err
	}
	pf, err := os.CreateTemp(s.tempDir(), "provenix-key-*.pub")
	if err != nil {
		return err
	}
	pf.WriteString(pub)
	pf.Close()
	s.pubFile = pf.Name()
	s.signerNote = "job step (key from a secret)"
	return s.publish(ctx, func(b *builder.Builder) { b.Signer = signer })
}

// buildKeyless signs with a Fulcio certificate for the job's OIDC identity,
// timestamps each signature at the TSA (tsa-url) and logs each bundle in
// Rekor: no long-lived key at all.
func (s *step) buildKeyless(ctx context.Context) error {
	in := s.in
	if in.fulcioURL == "" || in.rekorURL == "" || in.tsaURL == "" {
		// Without a timestamp authority a Rekor v2 entry gives the bundle no
		// trusted time, and verifiers refuse it: fail now, not after publishing.
		return errors.New("signing: keyless needs fulcio-url, rekor-url and tsa-url (a private Sigstore: the public Fulcio does not accept Forgejo issuers yet; Rekor v2 needs a timestamp authority)")
	}
	if in.builderID == "" {
		return errors.New("signing: keyless needs builder-id, the id the cache policy trusts this identity for")
	}
	if in.natsURL == "" {
		return errors.New("signing: keyless needs nats-url, the NATS server to publish to")
	}
	tok, err := OIDCToken(ctx, s.cfg.Getenv, "sigstore")
	if err != nil {
		return err
	}
	maskSecret(s.gha, tok)
	s.signerNote = "job step, keyless (Fulcio certificate for the job's OIDC identity)"
	s.capture = CaptureJobStepKeyless
	opts := attest.KeylessOptions{FulcioURL: in.fulcioURL, RekorURL: in.rekorURL, TSAURL: in.tsaURL, IDToken: tok}
	return s.publish(ctx, func(b *builder.Builder) {
		b.SignStatement = func(ctx context.Context, st *intoto.Statement) ([]byte, error) {
			return attest.SignKeyless(ctx, st, opts)
		}
	})
}

// publish builds every target with a builder configured by setup, writes
// the bundles under RUNNER_TEMP and records the rows.
func (s *step) publish(ctx context.Context, setup func(*builder.Builder)) error {
	in := s.in
	tgts, err := s.targets(ctx)
	if err != nil {
		return err
	}
	opts := []queue.Option{queue.WithName("provenix-action"), queue.WithLogger(s.cfg.Logger)}
	if in.natsCreds != "" {
		cf, err := s.writeSecret("provenix-nats-*.creds", []byte(in.natsCreds+"\n"))
		if err != nil {
			return fmt.Errorf("write the NATS credentials to a temporary file: %w", err)
		}
		defer os.Remove(cf)
		opts = append(opts, queue.WithCredsFile(cf))
	}
	if in.natsToken != "" {
		opts = append(opts, queue.WithToken(in.natsToken))
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	conn, err := queue.Connect(cctx, in.natsURL, opts...)
	cancel()
	if err != nil {
		return fmt.Errorf("connect to NATS at %s: %w", in.natsURL, err)
	}
	defer conn.Close()

	b := &builder.Builder{
		Nix: s.nix(), Queue: conn, BuilderID: in.builderID, Tenant: in.tenant,
		Version: s.cfg.Version, Logger: s.cfg.Logger, StageClosures: true, RekorURL: in.rekorURL,
	}
	setup(b)
	bundleDir := filepath.Join(s.tempDir(), "provenix-bundles")
	if err := os.MkdirAll(bundleDir, 0o755); err != nil {
		return err
	}
	return b.BuildTargets(ctx, tgts, func(p builder.Published) error {
		bf := filepath.Join(bundleDir, strings.TrimSuffix(path.Base(p.DrvPath), ".drv")+".sigstore.json")
		if err := os.WriteFile(bf, p.Bundle, 0o644); err != nil {
			return err
		}
		for _, o := range p.Outputs {
			s.rows = append(s.rows, Row{System: p.System, DrvPath: p.DrvPath, Output: o.Name, StorePath: o.Path, NarSHA256: o.NarHashHex(),
				BuilderID: in.builderID, Bundle: bf, Duplicate: p.Duplicate, Verdict: VerdictPublished})
		}
		return nil
	})
}

// buildViaRunner realises as the job user and asks the runner, over its
// per-job socket, to check, sign and publish: the key never enters the job.
func (s *step) buildViaRunner(ctx context.Context) error {
	sock, tok := s.cfg.Getenv(capture.EnvSocket), s.cfg.Getenv(capture.EnvToken)
	if sock == "" || tok == "" {
		return fmt.Errorf("signing: runner needs a Provenix runner job (%s and %s are not set); use signing: key elsewhere", capture.EnvSocket, capture.EnvToken)
	}
	rc := &capture.Client{Socket: sock, Token: tok}
	s.signerNote = "Provenix runner"
	tgts, err := s.targets(ctx)
	if err != nil {
		return err
	}
	return builder.BuildViaRunner(ctx, s.nix(), rc, tgts, builder.ViaRunnerOptions{
		Attested: func(rb builder.RunnerBuild) {
			for _, r := range rb.Results {
				for _, o := range r.Outputs {
					s.rows = append(s.rows, Row{System: r.System, DrvPath: r.DrvPath, Output: o.Name, StorePath: o.Path, NarSHA256: o.NarSHA256,
						BuilderID: r.BuilderID, Duplicate: r.Duplicate, Verdict: VerdictPublished})
				}
			}
		},
	})
}
