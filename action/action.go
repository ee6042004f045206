// Package action is the logic of 'provenix action', the program behind the
// workflow step action.yml: it reads its inputs from INPUT_* like an Actions
// step, builds and attests the installables (signed by the Provenix runner
// over its socket, or by the step itself with a key from a secret),
// publishes the results, writes the bundles under RUNNER_TEMP, sets the
// step's outputs, writes a job summary and, when asked, waits for the cache
// and verifies what it published.
package action

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	intoto "github.com/in-toto/attestation/go/v1"
	githubactions "github.com/sethvargo/go-githubactions"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/builder"
	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/feedback"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/runner/capture"
)

// Verdicts, the step's verdict output.
const (
	VerdictPublished   = "published"
	VerdictVerified    = "verified"
	VerdictNotVerified = "not verified"
)

// ErrNoOIDC: keyless signing needs the job's OIDC token, which Forgejo
// (≥ 15, enable-openid-connect) offers through ACTIONS_ID_TOKEN_REQUEST_*.
var ErrNoOIDC = errors.New("signing: keyless needs the job's OIDC token: ACTIONS_ID_TOKEN_REQUEST_URL and _TOKEN are not set (Forgejo ≥ 15 with enable-openid-connect: true on the workflow)")

// VerifyRequest is one cache entry to verify.
type VerifyRequest struct {
	CacheURL  string
	StorePath string
	// KeyFile is the trusted builder public key (PEM), trusted for BuilderID.
	KeyFile   string
	BuilderID string
}

// VerifyFunc verifies a cache entry as 'provenix verify --cache' does and
// returns its verdict and a human-readable report.
type VerifyFunc func(ctx context.Context, r VerifyRequest) (verified bool, report string, err error)

// Config is what Run needs from its caller.
type Config struct {
	// Getenv reads the step's environment (os.Getenv in production).
	Getenv func(string) string
	// Stdout receives workflow commands (::error::, ::add-mask::) and the
	// report; Stderr Nix's build log.
	Stdout, Stderr io.Writer
	// Classify turns an installable into what the builder builds, with the
	// rules of 'provenix build'.
	Classify func(target, attr string) (attest.Installable, error)
	// Verify, for verify: true.
	Verify VerifyFunc
	// Version is the provenix version recorded in the provenance.
	Version string
	Logger  *slog.Logger
	// CacheTimeout bounds the wait for each narinfo (default 2 minutes).
	CacheTimeout time.Duration
}

// Row is one attested output.
type Row struct {
	System    string
	DrvPath   string
	Output    string
	StorePath string
	NarSHA256 string
	BuilderID string
	Bundle    string // file under RUNNER_TEMP; empty when the runner signed
	Duplicate bool
	Verdict   string
}

// Run runs the step. Every error is also reported as an ::error::
// annotation; the caller exits non-zero on one.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Getenv == nil {
		cfg.Getenv = os.Getenv
	}
	if cfg.Stdout == nil {
		cfg.Stdout = io.Discard
	}
	if cfg.Stderr == nil {
		cfg.Stderr = io.Discard
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.CacheTimeout == 0 {
		cfg.CacheTimeout = 2 * time.Minute
	}
	gha := githubactions.New(githubactions.WithGetenv(cfg.Getenv), githubactions.WithWriter(cfg.Stdout))
	s := &step{cfg: cfg, gha: gha}
	err := s.run(ctx)
	if err != nil {
		gha.Errorf("provenix: %s", err)
	}
	return err
}

type step struct {
	cfg  Config
	gha  *githubactions.Action
	in   *inputs
	rows []Row
	// signerNote says in the summary who signed; capture goes into the
	// provenance's workflow record.
	signerNote string
	capture    string
	// pubFile is the step key's public half, for verify.
	pubFile string
}

func (s *step) run(ctx context.Context) error {
	in, err := readInputs(s.gha, s.cfg.Getenv)
	if err != nil {
		return err
	}
	s.in = in
	defer func() {
		if s.pubFile != "" {
			os.Remove(s.pubFile)
		}
	}()
	if s.cfg.Classify == nil {
		return errors.New("no target classifier configured")
	}
	var buildErr error
	switch in.signing {
	case SigningRunner:
		buildErr = s.buildViaRunner(ctx)
	case SigningKey:
		buildErr = s.buildWithKey(ctx)
	case SigningKeyless:
		buildErr = s.buildKeyless(ctx)
	default:
		return fmt.Errorf("input signing %q: want runner, key or keyless", in.signing)
	}
	verdict := VerdictPublished
	var verifyErr error
	fb := s.forge(ctx)
	if buildErr == nil && in.verify {
		fb.statuses(ctx, s.rows, feedback.StatePending, "published; waiting for the cache to verify")
		verdict, verifyErr = s.verifyAll(ctx)
	}
	switch {
	case buildErr != nil:
		fb.statuses(ctx, s.rows, feedback.StateFailure, "build or publication failed")
	case verifyErr != nil:
		fb.statuses(ctx, s.rows, feedback.StateFailure, "not verified in the cache")
	case in.verify:
		fb.statuses(ctx, s.rows, feedback.StateSuccess, "verified in the cache")
	default:
		fb.statuses(ctx, s.rows, feedback.StatePending, "published; the cache decides")
	}
	if buildErr == nil {
		fb.releaseAssets(ctx, s.rows)
	}
	if len(s.rows) > 0 {
		if err := s.outputs(verdict); err != nil {
			return errors.Join(buildErr, verifyErr, err)
		}
	}
	return errors.Join(buildErr, verifyErr)
}

// forgeFeedback reports to the forge the workflow runs on: a commit status
// per system (context provenix/<system>) and, on tag builds, the bundles
// as release assets. It never fails the step: feedback is best effort and
// each problem is a warning.
type forgeFeedback struct {
	s                *step
	c                *feedback.Client
	owner, repo, sha string
	tag, cacheURL    string
}

func (s *step) forge(ctx context.Context) *forgeFeedback {
	fb := &forgeFeedback{s: s}
	if s.in.forgeToken == "" {
		return fb
	}
	get := s.cfg.Getenv
	server, repo := get("GITHUB_SERVER_URL"), get("GITHUB_REPOSITORY")
	owner, name, ok := strings.Cut(repo, "/")
	if server == "" || !ok {
		s.gha.Warningf("forge feedback: GITHUB_SERVER_URL or GITHUB_REPOSITORY missing; no commit status")
		return fb
	}
	c, err := feedback.New(ctx, server, s.in.forgeToken)
	if err != nil {
		s.gha.Warningf("forge feedback: %v", err)
		return fb
	}
	fb.c, fb.owner, fb.repo, fb.sha, fb.cacheURL = c, owner, name, get("GITHUB_SHA"), s.in.cacheURL
	if t, ok := strings.CutPrefix(get("GITHUB_REF"), "refs/tags/"); ok {
		fb.tag = t
	}
	return fb
}

func (fb *forgeFeedback) statuses(ctx context.Context, rows []Row, state feedback.State, desc string) {
	if fb.c == nil || fb.sha == "" {
		return
	}
	bySystem := map[string][]Row{}
	for _, r := range rows {
		bySystem[r.System] = append(bySystem[r.System], r)
	}
	for sys, rs := range bySystem {
		st := feedback.Status{System: sys, State: state, Description: fmt.Sprintf("%d output(s) %s", len(rs), desc)}
		if fb.cacheURL != "" && len(rs) > 0 {
			st.TargetURL = fb.cacheURL + "/" + cachelayout.ProvenanceKey(rs[0].StorePath)
		}
		if err := fb.c.SetStatus(ctx, fb.owner, fb.repo, fb.sha, st); err != nil {
			fb.s.gha.Warningf("forge feedback: commit status for %s: %v", sys, err)
		}
	}
}

func (fb *forgeFeedback) releaseAssets(ctx context.Context, rows []Row) {
	if fb.c == nil || fb.tag == "" {
		return
	}
	var files []string
	for _, r := range rows {
		if r.Bundle != "" {
			files = append(files, r.Bundle)
		}
	}
	if len(files) == 0 {
		return
	}
	if _, err := fb.c.AttachBundles(ctx, fb.owner, fb.repo, fb.tag, files); err != nil {
		fb.s.gha.Warningf("forge feedback: release assets for %s: %v", fb.tag, err)
	}
}

func (s *step) nix() *nix.Nix {
	return &nix.Nix{Options: s.in.nixOptions, Stderr: s.cfg.Stderr}
}

func (s *step) targets() ([]builder.Target, error) {
	src, wf, inv := s.workflow()
	var out []builder.Target
	for _, t := range s.in.installables {
		in, err := s.cfg.Classify(t, s.in.attr)
		if err != nil {
			return nil, err
		}
		out = append(out, builder.Target{Installable: in, Args: s.in.args, ArgStrs: s.in.argstrs, Source: src, Workflow: wf, InvocationID: inv})
	}
	return out, nil
}

// workflow is the job as the step's environment describes it: the job's
// own word, recorded with capture "job-step-key" so nobody mistakes it for
// what a runner saw.
func (s *step) workflow() (*attest.Source, *attest.Workflow, string) {
	capture := s.capture
	if capture == "" {
		capture = CaptureJobStepKey
	}
	ctx, err := s.gha.Context()
	if err != nil || ctx.Repository == "" {
		return nil, &attest.Workflow{Capture: capture}, ""
	}
	server := strings.TrimRight(ctx.ServerURL, "/")
	wf := &attest.Workflow{
		Server: server, Repository: ctx.Repository, Ref: ctx.Ref, Sha: ctx.SHA,
		Workflow: ctx.Workflow, Job: ctx.Job, Event: ctx.EventName, Actor: ctx.Actor,
		Capture: capture,
	}
	var inv string
	if ctx.RunID != 0 {
		wf.RunID = fmt.Sprint(ctx.RunID)
		inv = fmt.Sprintf("%s/%s/actions/runs/%d", server, ctx.Repository, ctx.RunID)
	}
	src := &attest.Source{Repository: server + "/" + ctx.Repository, Revision: ctx.SHA, Ref: ctx.Ref}
	return src, wf, inv
}

// tempDir is RUNNER_TEMP, where the step leaves its files.
func (s *step) tempDir() string {
	if d := s.cfg.Getenv("RUNNER_TEMP"); d != "" {
		return d
	}
	return os.TempDir()
}

// writeSecret writes a secret to a new 0600 file under RUNNER_TEMP; the
// caller removes it.
func (s *step) writeSecret(pattern string, data []byte) (string, error) {
	f, err := os.CreateTemp(s.tempDir(), pattern)
	if err != nil {
		return "", err
	}
	name := f.Name()
	if err := f.Chmod(0o600); err == nil {
		_, err = f.Write(data)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			return name, nil
		}
	} else {
		f.Close()
	}
	os.Remove(name)
	return "", err
}

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

// OIDCToken asks the forge for the job's OIDC ID token for audience, the
// way GitHub's and Forgejo's toolkits do: GET the request URL with
// &audience=…, bearer the request token, read {"value": …}.
func OIDCToken(ctx context.Context, getenv func(string) string, audience string) (string, error) {
	u, bearer := getenv("ACTIONS_ID_TOKEN_REQUEST_URL"), getenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
	if u == "" || bearer == "" {
		return "", ErrNoOIDC
	}
	sep := "?"
	if strings.Contains(u, "?") {
		sep = "&"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u+sep+"audience="+url.QueryEscape(audience), nil)
	if err != nil {
		return "", fmt.Errorf("OIDC token request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+bearer)
	req.Header.Set("Accept", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("OIDC token request: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("OIDC token request: the forge answered %s", resp.Status)
	}
	var body struct {
		Value string `json:"value"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body); err != nil || body.Value == "" {
		return "", fmt.Errorf("OIDC token request: no token in the answer (%v)", err)
	}
	return body.Value, nil
}

// publish builds every target with a builder configured by setup, writes
// the bundles under RUNNER_TEMP and records the rows.
func (s *step) publish(ctx context.Context, setup func(*builder.Builder)) error {
	in := s.in
	tgts, err := s.targets()
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
	for _, t := range tgts {
		pubs, err := b.Build(ctx, t)
		for _, p := range pubs {
			bf := filepath.Join(bundleDir, strings.TrimSuffix(path.Base(p.DrvPath), ".drv")+".sigstore.json")
			if werr := os.WriteFile(bf, p.Bundle, 0o644); werr != nil {
				return errors.Join(err, werr)
			}
			for _, o := range p.Outputs {
				s.rows = append(s.rows, Row{System: p.System, DrvPath: p.DrvPath, Output: o.Name, StorePath: o.Path, NarSHA256: o.NarHashHex(),
					BuilderID: in.builderID, Bundle: bf, Duplicate: p.Duplicate, Verdict: VerdictPublished})
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
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
	tgts, err := s.targets()
	if err != nil {
		return err
	}
	b := &builder.Builder{Nix: s.nix(), Logger: s.cfg.Logger}
	for _, t := range tgts {
		drvs, err := b.Derivations(ctx, t)
		if err != nil {
			return err
		}
		for _, drv := range drvs {
			if _, err := b.Nix.Realise(ctx, drv); err != nil {
				return err
			}
			res, err := rc.Attest(ctx, []string{drv})
			for _, r := range res {
				for _, o := range r.Outputs {
					s.rows = append(s.rows, Row{System: r.System, DrvPath: r.DrvPath, Output: o.Name, StorePath: o.Path, NarSHA256: o.NarSHA256,
						BuilderID: r.BuilderID, Duplicate: r.Duplicate, Verdict: VerdictPublished})
				}
			}
			if err != nil {
				return fmt.Errorf("the runner did not attest %s: %w", drv, err)
			}
		}
	}
	return nil
}

// verifyAll waits for each output's narinfo and verifies it.
func (s *step) verifyAll(ctx context.Context) (string, error) {
	if s.cfg.Verify == nil {
		return "", errors.New("verify: no verifier configured")
	}
	keyFile := s.pubFile
	if s.in.signing == SigningRunner {
		if s.in.verifyKey == "" || s.in.builderID == "" {
			return "", errors.New("verify with signing: runner needs verify-key (the runner's public key) and builder-id")
		}
		f, err := os.CreateTemp(s.tempDir(), "provenix-verify-*.pub")
		if err != nil {
			return "", err
		}
		f.WriteString(s.in.verifyKey + "\n")
		f.Close()
		defer os.Remove(f.Name())
		keyFile = f.Name()
	}
	verdict := VerdictVerified
	var errs []error
	for i := range s.rows {
		r := &s.rows[i]
		if err := s.waitNarinfo(ctx, r.StorePath); err != nil {
			r.Verdict = VerdictNotVerified
			errs = append(errs, err)
			verdict = VerdictNotVerified
			continue
		}
		ok, rep, err := s.cfg.Verify(ctx, VerifyRequest{CacheURL: s.in.cacheURL, StorePath: r.StorePath, KeyFile: keyFile, BuilderID: s.in.builderID})
		fmt.Fprint(s.cfg.Stdout, rep)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("verify %s: %w", r.StorePath, err))
		case !ok:
			errs = append(errs, fmt.Errorf("%s is not verified in %s", r.StorePath, s.in.cacheURL))
		}
		if err != nil || !ok {
			r.Verdict, verdict = VerdictNotVerified, VerdictNotVerified
			continue
		}
		r.Verdict = VerdictVerified
	}
	return verdict, errors.Join(errs...)
}

// waitNarinfo polls the cache until the narinfo of storePath appears.
func (s *step) waitNarinfo(ctx context.Context, storePath string) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.CacheTimeout)
	defer cancel()
	u := s.in.cacheURL + "/" + cachelayout.NarinfoKey(storePath)
	delay := 50 * time.Millisecond
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the cache %s did not publish %s within %s", s.in.cacheURL, storePath, s.cfg.CacheTimeout)
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// outputs sets the step outputs and writes the job summary. Outside an
// Actions step (no GITHUB_OUTPUT) the outputs are printed instead.
func (s *step) outputs(verdict string) error {
	var paths, hashes, bundles []string
	seen := map[string]bool{}
	for _, r := range s.rows {
		paths = append(paths, r.StorePath)
		hashes = append(hashes, r.NarSHA256)
		if r.Bundle != "" && !seen[r.Bundle] {
			seen[r.Bundle] = true
			bundles = append(bundles, r.Bundle)
		}
	}
	outs := [][2]string{
		{"store-paths", strings.Join(paths, "\n")},
		{"nar-hashes", strings.Join(hashes, "\n")},
		{"bundle-paths", strings.Join(bundles, "\n")},
		{"verdict", verdict},
	}
	if s.cfg.Getenv("GITHUB_OUTPUT") == "" {
		for _, o := range outs {
			fmt.Fprintf(s.cfg.Stdout, "%s: %s\n", o[0], strings.ReplaceAll(o[1], "\n", " "))
		}
	} else {
		for _, o := range outs {
			s.gha.SetOutput(o[0], o[1])
		}
	}
	if s.cfg.Getenv("GITHUB_STEP_SUMMARY") != "" {
		s.gha.AddStepSummary(Summary(s.rows, s.signerNote, s.in.cacheURL))
	}
	return nil
}

// Summary is the job summary: a markdown table, one row per output.
func Summary(rows []Row, signer, cacheURL string) string {
	var b strings.Builder
	b.WriteString("### Provenix\n\n")
	if signer != "" {
		fmt.Fprintf(&b, "Signed by: %s\n\n", signer)
	}
	b.WriteString("| output | NAR sha256 | builder | verdict |\n|---|---|---|---|\n")
	for _, r := range rows {
		v := r.Verdict
		if r.Duplicate {
			v += " (already published)"
		}
		if cacheURL != "" {
			v += fmt.Sprintf(" ([narinfo](%s/%s), [provenance](%s/%s))", cacheURL, cachelayout.NarinfoKey(r.StorePath), cacheURL, cachelayout.ProvenanceKey(r.StorePath))
		}
		fmt.Fprintf(&b, "| `%s` | `%s` | `%s` | %s |\n", r.StorePath, r.NarSHA256, r.BuilderID, v)
	}
	return b.String()
}
