package action

import (
	"fmt"
	"strconv"
	"strings"

	githubactions "github.com/sethvargo/go-githubactions"

	"codeberg.org/provenix/provenix/nix"
)

// Signing modes of the workflow step.
const (
	// SigningRunner: the Provenix runner signs over its per-job socket; the
	// key never enters the job.
	SigningRunner = "runner"
	// SigningKey: the step signs with a key handed to it from a secret.
	SigningKey = "key"
	// SigningKeyless: a Fulcio certificate for the job's OIDC identity.
	SigningKeyless = "keyless"
)

// CaptureJobStepKey is the provenance's workflow.capture when a job step
// signed with a key from a secret: weaker than a runner's signature,
// because the key was inside the job. 'provenix verify' shows it.
const CaptureJobStepKey = "job-step-key"

// CaptureJobStepKeyless marks provenance a workflow step signed keylessly:
// the certificate names the job's OIDC identity, which the forge vouches
// for, but the step still built and described the output itself.
const CaptureJobStepKeyless = "job-step-keyless"

// Input is one input of action.yml.
type Input struct {
	Name        string
	Description string
	Secret      bool
}

// Inputs are the inputs action.yml declares and 'provenix action' reads,
// each from INPUT_<NAME> (upper case; '-' as is, as Actions sets it for
// JavaScript and Docker actions, or as '_', as action.yml passes it).
var Inputs = []Input{
	{Name: "installables", Description: "what to build, separated by spaces or newlines: FILE.nix (with attr), /nix/store/...drv, or FLAKEREF#ATTR"},
	{Name: "attr", Description: "attribute to build from .nix files (nix-build -A)"},
	{Name: "args", Description: "NAME=EXPR or NAME EXPR lines, passed as --arg NAME EXPR to .nix files"},
	{Name: "argstrs", Description: "NAME=VALUE or NAME VALUE lines, passed as --argstr NAME VALUE to .nix files"},
	{Name: "nix-options", Description: "NAME=VALUE lines, passed to Nix as --option NAME VALUE"},
	{Name: "nats-url", Description: "NATS server the results are published to (signing: key)"},
	{Name: "nats-creds", Description: "NATS credentials file contents (from a secret)", Secret: true},
	{Name: "nats-token", Description: "NATS token (from a secret)", Secret: true},
	{Name: "tenant", Description: "tenant the results belong to (default: default)"},
	{Name: "signing", Description: "runner | key | keyless (default: runner inside a Provenix runner job, else key)"},
	{Name: "key", Description: "PEM private builder key (from a secret; signing: key)", Secret: true},
	{Name: "builder-id", Description: "builder id recorded in the provenance; the cache policy binds it to the key (signing: key)"},
	{Name: "cache-url", Description: "binary cache base URL, for links in the job summary and for verify"},
	{Name: "forge-token", Description: "token for commit statuses (provenix/<system>) and, on tags, release assets; pass the job token (github.token) or a token with repository write access", Secret: true},
	{Name: "fulcio-url", Description: "Fulcio (a private Sigstore's; the public one does not accept Forgejo issuers yet) that certifies the job's OIDC identity (signing: keyless)"},
	{Name: "rekor-url", Description: "Rekor v2 transparency log to record each bundle in (signing: key; required for keyless)"},
	{Name: "tsa-url", Description: "RFC 3161 timestamp authority (a Sigstore timestamp-authority base URL; .../api/v1/timestamp also works) that timestamps each keyless signature (signing: keyless); Rekor v2 records no time, so without it Provenix's verifier refuses keyless bundles"},
	{Name: "verify", Description: "true: wait for the cache to publish each output and verify it as 'provenix verify --cache' does"},
	{Name: "verify-key", Description: "PEM public key the runner signs with, trusted for builder-id when verifying (signing: runner)"},
	{Name: "version", Description: "provenix version action.yml installs with go install when provenix is not on PATH"},
}

// inputs are the parsed inputs.
type inputs struct {
	installables  []string
	attr          string
	args, argstrs map[string]string
	nixOptions    map[string]string
	natsURL       string
	natsCreds     string
	natsToken     string
	tenant        string
	signing       string
	key           string
	builderID     string
	cacheURL      string
	rekorURL      string
	fulcioURL     string
	tsaURL        string
	forgeToken    string
	verify        bool
	verifyKey     string
}

// rawInput reads one input: INPUT_NATS-URL as Actions sets it, or
// INPUT_NATS_URL as action.yml passes it through env (shells cannot name
// variables with '-').
func rawInput(gha *githubactions.Action, getenv func(string) string, name string) string {
	if v := gha.GetInput(name); v != "" {
		return v
	}
	return strings.TrimSpace(getenv("INPUT_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))))
}

// maskSecret asks the runner to mask v and each of its lines, so that a
// multi-line secret (a PEM key, a creds file) is hidden line by line too.
func maskSecret(gha *githubactions.Action, v string) {
	if v == "" {
		return
	}
	gha.AddMask(v)
	for _, l := range strings.Split(v, "\n") {
		l = strings.TrimSpace(l)
		// PEM armour lines are public and short lines would garble logs.
		if len(l) < 8 || strings.HasPrefix(l, "-----") {
			continue
		}
		gha.AddMask(l)
	}
}

func readInputs(gha *githubactions.Action, getenv func(string) string) (*inputs, error) {
	get := func(n string) string { return rawInput(gha, getenv, n) }
	in := &inputs{key: get("key"), natsToken: get("nats-token"), natsCreds: get("nats-creds"), forgeToken: get("forge-token")}
	// Secrets are masked before anything else is read or printed.
	maskSecret(gha, in.forgeToken)
	maskSecret(gha, in.key)
	maskSecret(gha, in.natsToken)
	maskSecret(gha, in.natsCreds)

	in.installables = strings.Fields(get("installables"))
	if len(in.installables) == 0 {
		return nil, fmt.Errorf("input installables is empty: name a FILE.nix (with attr), a .drv path or FLAKEREF#ATTR")
	}
	in.attr = get("attr")
	var err error
	if in.args, err = nixArgs("args", get("args")); err != nil {
		return nil, err
	}
	if in.argstrs, err = nixArgs("argstrs", get("argstrs")); err != nil {
		return nil, err
	}
	if in.nixOptions, err = pairs("nix-options", get("nix-options")); err != nil {
		return nil, err
	}
	in.natsURL = get("nats-url")
	if in.natsURL == "" {
		in.natsURL = strings.TrimSpace(getenv("PROVENIX_NATS_URL"))
	}
	in.tenant = get("tenant")
	if in.tenant == "" {
		in.tenant = "default"
	}
	in.signing = get("signing")
	if in.signing == "" {
		in.signing = SigningKey
		if getenv("PROVENIX_RUNNER_SOCKET") != "" {
			in.signing = SigningRunner
		}
	}
	in.builderID = get("builder-id")
	in.cacheURL = strings.TrimRight(get("cache-url"), "/")
	in.rekorURL = strings.TrimRight(get("rekor-url"), "/")
	in.fulcioURL = strings.TrimRight(get("fulcio-url"), "/")
	in.tsaURL = strings.TrimRight(get("tsa-url"), "/")
	if v := get("verify"); v != "" {
		if in.verify, err = strconv.ParseBool(v); err != nil {
			return nil, fmt.Errorf("input verify %q: want true or false", v)
		}
	}
	in.verifyKey = get("verify-key")
	if in.verify && in.cacheURL == "" {
		return nil, fmt.Errorf("input verify: true needs cache-url, the cache to verify against")
	}
	return in, nil
}

// pairs parses NAME=VALUE lines; blank lines are skipped.
// nixArgs reads Nix arguments, one a line, as NAME=VALUE or as Nix writes
// them, NAME VALUE (nix.SplitArg).
func nixArgs(name, v string) (map[string]string, error) {
	m := map[string]string{}
	for _, l := range strings.Split(v, "\n") {
		if strings.TrimSpace(l) == "" {
			continue
		}
		k, val, err := nix.SplitArg(l)
		if err != nil {
			return nil, fmt.Errorf("input %s: %w", name, err)
		}
		m[k] = val
	}
	return m, nil
}

func pairs(name, v string) (map[string]string, error) {
	m := map[string]string{}
	for _, l := range strings.Split(v, "\n") {
		l = strings.TrimSpace(l)
		if l == "" {
			continue
		}
		k, val, ok := strings.Cut(l, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return nil, fmt.Errorf("input %s: line %q: want NAME=VALUE", name, l)
		}
		m[strings.TrimSpace(k)] = val
	}
	return m, nil
}
