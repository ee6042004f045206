package farm

import (
	"context"
	"errors"
	"fmt"
	"io"

	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/queue"
)

// ClosureKey is the staging key of build set id's .drv closure, in the
// staging scope of the builder id its submitter stages as (a tenant's
// submitter user may write queue.SubmitterBuilderID's scope only, so no
// runner can replace the closure of a set it builds).
func ClosureKey(builderID, id string) string {
	return queue.ScopedKey(queue.ClosureKey(id), builderID)
}

// StageClosure streams a nix-store --export of the .drv closure of roots
// (the .drv files and the sources they name, no outputs) from nx's store
// into staging, under ClosureKey(builderID, id), so that workers can import
// the derivations they are asked to build: nix.Import admits only
// content-addressed paths that match their contents, so the export is
// only as trusted as its paths' names. It returns the key.
func StageClosure(ctx context.Context, conn *queue.Conn, nx *nix.Nix, builderID, id string, roots []string) (string, error) {
	if err := validID(id); err != nil {
		return "", err
	}
	paths, err := nx.Requisites(ctx, roots...)
	if err != nil {
		return "", fmt.Errorf("farm: closure of %d derivations: %w", len(roots), err)
	}
	if builderID == "" {
		return "", errors.New("farm: stage closure: no builder id to stage as")
	}
	key := ClosureKey(builderID, id)
	err = nx.ExportStream(ctx, func(r io.Reader) error {
		_, err := conn.Stage(ctx, key, r)
		return err
	}, paths...)
	if err != nil {
		return "", fmt.Errorf("farm: stage the closure of set %s: %w", id, err)
	}
	return key, nil
}
