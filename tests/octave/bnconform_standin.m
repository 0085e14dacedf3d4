function name = bnconform_standin()
% STAND-IN, NOT MATLAB. Its presence on the path tells bnconform_run.m that the functions of this folder
% (dlarray, extractdata, batchnorm) are bnconform's test stand-ins under GNU Octave, written to test the MATLAB
% runner's parsing, layout and input/output; every observation then names the stand-in, and `bnconform import`
% files it under "matlab.*[stand-in:octave]", never as MATLAB's.
name = 'octave';
end
