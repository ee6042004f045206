package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"codeberg.org/provenix/provenix/action"
)

func newActionCmd(g *globals) *cobra.Command {
	var b strings.Builder
	for _, in := range action.Inputs {
		secret := ""
		if in.Secret {
			secret = " [secret, masked]"
		}
		fmt.Fprintf(&b, "  %-13s %s%s\n", in.Name, in.Description, secret)
	}
	return &cobra.Command{
		Use:   "action",
		Short: "Run as the workflow step of action.yml (inputs from INPUT_* env)",
		Long: `The program behind action.yml, Provenix's workflow step for Forgejo and
GitHub Actions. It is meant to run from action.yml, not by hand: it reads
its inputs from the environment like an Actions step (INPUT_NAME, '-' or
'_' in NAME), writes its outputs to $GITHUB_OUTPUT and a markdown table to
$GITHUB_STEP_SUMMARY, reports errors as ::error:: annotations and exits
non-zero on one. Secret inputs are masked (::add-mask::) before anything
else happens.

Signing: runner (inside a Provenix runner job: the runner signs over its
socket and the key never enters the job), key (the step signs with the key
input, written to a 0600 file under RUNNER_TEMP and removed afterwards;
the provenance records workflow.capture "job-step-key"), keyless (a Fulcio
certificate for the job's OIDC identity from a private Sigstore: needs
fulcio-url, rekor-url and tsa-url, and Forgejo's OIDC token; the provenance
records workflow.capture "job-step-keyless").

Outputs: store-paths, nar-hashes, bundle-paths (bundles under RUNNER_TEMP),
verdict (published, or verified / not verified with verify: true).

Inputs:
` + b.String(),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runAction(cmd.Context(), g, os.Getenv)
		},
	}
}

func runAction(ctx context.Context, g *globals, getenv func(string) string) error {
	err := action.Run(ctx, action.Config{
		Getenv:  getenv,
		Stdout:  g.stdout,
		Stderr:  g.stderr,
		Version: version,
		Logger:  g.logger(),
	})
	if err != nil {
		return &exitError{code: exitFailed, err: err}
	}
	return nil
}
