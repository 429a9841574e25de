// The commands' side of key rotation and instance groups: `stip-developer
// rotate` and `add-user --instance-group NAME|--exclusive`. They make the new
// instances in this process (fresh keys, transform of the plaintext model),
// record the rotations in the state (instance_groups.h), and, when a
// `stip-developer serve` owns the state, wait until it has deployed them
// (instance_rollout.h does the pushing, switching, draining and deleting).
// Without a running serve the rotation waits in the state; serve carries it
// out when it starts, before its Registry answers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/transform/transform_checkpoint.h"
#include "developer/instance_groups.h"

namespace stip {

class StateStore;

struct RotateRequest {
  std::vector<std::string> groups;  // the groups to rotate ("default" included by name)
  bool all = false;                 // every group that has an instance
  int64_t drain_seconds = 300;      // how long open sessions on the old instances may go on
  // The plaintext model; "" = the one recorded in each old instance. It must
  // be the same model (fingerprint): a rotation changes keys, not the model.
  std::string model_dir;
  TransformOptions transform;
};

// Makes a fresh instance for every group asked for and records its rotation
// (phase deploying). kInvalidArgument (nothing asked, a bad name),
// kNotFound (unknown group), kFailedPrecondition (a group with no instance
// yet, a rotation of it still deploying, another model). Instances made
// before a failure are removed again.
std::vector<Rotation> StartRotations(StateStore& state, const RotateRequest& request);

// A new group with a fresh instance of `model_dir` ("" = the default group's
// model), recorded as a rotation from no instance. kFailedPrecondition if the
// group exists.
Rotation CreateGroup(StateStore& state, const std::string& group, const std::string& model_dir,
                     const TransformOptions& transform = {});

enum class WaitOutcome {
  kSwitched,  // every rotation serves its group now (or is done, with until_done)
  kNoServe,   // no serve owns the state: it happens when serve starts
  kTimeout,
};

// Waits for the rotations `ids` to switch (draining or done), or with
// `until_done` to be done (old instances deleted).
WaitOutcome WaitForRotations(const StateStore& state, const std::vector<std::string>& ids,
                             bool until_done, double timeout_s);

}  // namespace stip
