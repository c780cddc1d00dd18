// Conversion between the wire JobSpec (resdist/v1/job.proto) and common/job_spec.h's struct, so
// that the coordinator, the workers and the job file share one validation (ValidateJobSpec).
// Unset optional scalars and empty strings take the struct's defaults. No validation here.
#pragma once

#include "common/job_spec.h"
#include "resdist/v1/job.pb.h"

namespace resdist {

JobSpec JobSpecFromProto(const v1::JobSpec& proto);
v1::JobSpec JobSpecToProto(const JobSpec& spec);

}  // namespace resdist
