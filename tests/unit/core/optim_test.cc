// SGD (PyTorch semantics) and learning-rate schedules, checked against values worked out by hand.
#include <gtest/gtest.h>

#include <cmath>

#include "worker/optim/sgd.h"

namespace resdist {
namespace {

Parameter MakeParam(float value, float grad, bool bn_or_bias = false) {
  Parameter p;
  p.name = "p";
  p.value.resize(Dims{1});
  p.grad.resize(Dims{1});
  p.value.data()[0] = value;
  p.grad.data()[0] = grad;
  p.is_bn_or_bias = bn_or_bias;
  return p;
}

TEST(Sgd, MomentumNesterovAndWeightDecayFollowPyTorch) {
  // torch.optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), p=1, grad=2
  // step 1: d = 2 + 0.01*1 = 2.01; buf = 2.01; update = d + 0.9*buf = 3.819; p = 0.6181
  // step 2 (grad 2 again): d = 2 + 0.01*0.6181 = 2.006181; buf = 0.9*2.01 + d = 3.815181;
  //         update = d + 0.9*buf = 5.4398439; p = 0.6181 - 0.54398439 = 0.07411561
  Parameter p = MakeParam(1.f, 2.f);
  SgdOptions o;
  o.lr = 0.1;
  o.momentum = 0.9;
  o.nesterov = true;
  o.weight_decay = 0.01;
  Sgd sgd({&p}, o);
  sgd.step(0.1);
  EXPECT_NEAR(p.value.data()[0], 0.6181, 1e-6);
  sgd.step(0.1);
  EXPECT_NEAR(p.value.data()[0], 0.07411561, 1e-6);
}

TEST(Sgd, PlainMomentum) {
  // buf1 = 2; p = 1 - 0.5*2 = 0; buf2 = 0.5*2 + 2 = 3; p = 0 - 0.5*3 = -1.5
  Parameter p = MakeParam(1.f, 2.f);
  SgdOptions o;
  o.momentum = 0.5;
  Sgd sgd({&p}, o);
  sgd.step(0.5);
  EXPECT_FLOAT_EQ(p.value.data()[0], 0.f);
  sgd.step(0.5);
  EXPECT_FLOAT_EQ(p.value.data()[0], -1.5f);
}

TEST(Sgd, WeightDecayCanSkipBatchNormAndBias) {
  Parameter w = MakeParam(1.f, 0.f), b = MakeParam(1.f, 0.f, /*bn_or_bias=*/true);
  SgdOptions o;
  o.momentum = 0;
  o.weight_decay = 0.1;
  o.decay_bn_and_bias = false;
  Sgd sgd({&w, &b}, o);
  sgd.step(1.0);
  EXPECT_FLOAT_EQ(w.value.data()[0], 0.9f);
  EXPECT_FLOAT_EQ(b.value.data()[0], 1.f);
}

TEST(Sgd, InvalidOptionsNameTheField) {
  SgdOptions o;
  o.lr = 0;
  EXPECT_NE(ValidateSgdOptions(o).message().find("optimizer.lr: 0 is not allowed"), std::string::npos);
  o.lr = -1;
  EXPECT_NE(ValidateSgdOptions(o).message().find("optimizer.lr: -1"), std::string::npos);
  o = SgdOptions();
  o.momentum = 1.0;
  EXPECT_NE(ValidateSgdOptions(o).message().find("optimizer.momentum: 1 is outside [0, 1)"), std::string::npos);
  o = SgdOptions();
  o.weight_decay = -1e-4;
  EXPECT_NE(ValidateSgdOptions(o).message().find("optimizer.weight_decay"), std::string::npos);
  o = SgdOptions();
  o.momentum = 0;
  o.nesterov = true;
  EXPECT_FALSE(ValidateSgdOptions(o).ok());
  EXPECT_TRUE(ValidateSgdOptions(SgdOptions()).ok());
}

TEST(LrSchedule, WarmupThenCosine) {
  LrScheduleOptions o;
  o.base_lr = 0.4;
  o.schedule = LrSchedule::kCosine;
  o.warmup_epochs = 1;
  LrScheduler s(o, /*steps_per_epoch=*/10, /*total_steps=*/110);
  EXPECT_NEAR(s.lr_at(0), 0.04, 1e-12);   // (0+1)/10 of the peak
  EXPECT_NEAR(s.lr_at(9), 0.4, 1e-12);
  EXPECT_NEAR(s.lr_at(10), 0.4, 1e-12);   // cosine starts at the peak
  EXPECT_NEAR(s.lr_at(60), 0.2, 1e-12);   // half way through the 100 cosine steps
  EXPECT_NEAR(s.lr_at(110), 0.0, 1e-12);
}

TEST(LrSchedule, StepAndConstantAndLinearScaling) {
  LrScheduleOptions o;
  o.base_lr = 0.1;
  o.schedule = LrSchedule::kStep;
  o.milestones = {2, 4};
  o.gamma = 0.1;
  LrScheduler s(o, 10, 60);
  EXPECT_NEAR(s.lr_at(19), 0.1, 1e-12);
  EXPECT_NEAR(s.lr_at(20), 0.01, 1e-12);
  EXPECT_NEAR(s.lr_at(45), 0.001, 1e-12);
  o.schedule = LrSchedule::kConstant;
  o.linear_scaling = true;
  o.global_batch = 1024;
  LrScheduler c(o, 10, 60);
  EXPECT_NEAR(c.lr_at(0), 0.4, 1e-12);
  EXPECT_NEAR(c.lr_at(59), 0.4, 1e-12);
}

TEST(LrSchedule, InvalidOptionsNameTheField) {
  LrScheduleOptions o;
  o.warmup_epochs = 5;
  EXPECT_NE(ValidateLrSchedule(o, 3).message().find("optimizer.warmup_epochs: 5 is outside [0, epochs=3]"),
            std::string::npos);
  o = LrScheduleOptions();
  o.schedule = LrSchedule::kStep;
  EXPECT_NE(ValidateLrSchedule(o, 3).message().find("optimizer.milestones"), std::string::npos);
  o.milestones = {2, 1};
  EXPECT_NE(ValidateLrSchedule(o, 3).message().find("optimizer.milestones[1]: 1"), std::string::npos);
  EXPECT_FALSE(ParseLrSchedule("linear").ok());
  EXPECT_NE(ParseLrSchedule("linear").status().message().find("expected constant, step or cosine"),
            std::string::npos);
}

}  // namespace
}  // namespace resdist
